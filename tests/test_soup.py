"""The soup stage: weighted averages of tiny Llama checkpoints, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from salsa import artifacts, soup

TOKENIZER_VOCAB = ["<pad>", "<eos>", "<unk>", *[f"w{i}" for i in range(29)]]


def tiny_config(**overrides):
    from transformers import LlamaConfig

    settings = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=2, vocab_size=32, max_position_embeddings=64, tie_word_embeddings=False)
    return LlamaConfig(**{**settings, **overrides})


def tiny_tokenizer(vocab=TOKENIZER_VOCAB):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({token: i for i, token in enumerate(vocab)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return tokenizer


def save_model(path: Path, seed: int, dtype=torch.float32, shard_size: str | None = None, tokenizer=None,
               **config_overrides) -> Path:
    """A tiny random Llama saved like a fine-tuning stage saves it."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(**config_overrides)).to(dtype)
    model.save_pretrained(path, **({"max_shard_size": shard_size} if shard_size else {}))
    (tokenizer or tiny_tokenizer()).save_pretrained(path)
    artifacts.write_json(path / artifacts.METADATA_FILE, {"stage": "sft", "seed": seed})
    return path


def weight_files(path: Path) -> list[Path]:
    index = path / soup.INDEX_FILE
    if index.exists():
        return [path / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [path / soup.SINGLE_FILE]


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in weight_files(path):
        tensors.update(load_file(file))
    return tensors


def weighted_mean(dirs: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """The reference: sum_i w_i * x_i in float32, rounded to the input dtype once."""
    states = [load_weights(d) for d in dirs]
    return {name: sum(w * s[name].float() for w, s in zip(weights, states)).to(states[0][name].dtype)
            for name in states[0]}


def rewrite_tensor(path: Path, name: str, new_name: str | None = None, value: torch.Tensor | None = None) -> None:
    """Rename or replace one tensor of a single-file checkpoint in place."""
    file = path / soup.SINGLE_FILE
    tensors = load_file(file)
    tensor = tensors.pop(name)
    tensors[new_name or name] = tensor if value is None else value
    save_file(tensors, file, metadata={"format": "pt"})


@pytest.fixture
def pair(tmp_path):
    return [save_model(tmp_path / "a", seed=1), save_model(tmp_path / "b", seed=2)]


@pytest.mark.parametrize("n_inputs,weights", [(2, []), (2, [0.25, 0.75]), (3, []), (3, [0.2, 0.3, 0.5])])
def test_soup_is_the_weighted_mean(tmp_path, n_inputs, weights):
    from transformers import AutoModelForCausalLM

    dirs = [save_model(tmp_path / f"in{i}", seed=i) for i in range(n_inputs)]
    summary = soup.average_checkpoints(dirs, weights, tmp_path / "soup", max_shard_bytes=10**9)
    expected = weighted_mean(dirs, weights or [1 / n_inputs] * n_inputs)
    souped = load_weights(tmp_path / "soup")
    assert summary["files"] == [soup.SINGLE_FILE] and souped.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(souped[name], tensor, rtol=1e-6, atol=1e-7)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "soup")
    for name, parameter in model.state_dict().items():
        torch.testing.assert_close(parameter, expected[name], rtol=1e-6, atol=1e-7)


def within_half_bf16_ulp(value: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Elementwise: is value the correctly rounded bf16 of exact (up to float32's own 2**-24 error)?"""
    _, exponent = torch.frexp(exact)
    half_ulp = torch.ldexp(torch.ones_like(exact), exponent - 9)  # bf16 keeps 8 significant bits
    return (value.double() - exact).abs() <= half_ulp * (1 + 2**-15) + 1e-30


def test_bf16_is_accumulated_in_float32_and_written_in_bf16(tmp_path):
    dirs = [save_model(tmp_path / f"in{i}", seed=i, dtype=torch.bfloat16) for i in range(3)]
    weights = [0.2, 0.3, 0.5]
    soup.average_checkpoints(dirs, weights, tmp_path / "soup", max_shard_bytes=10**9)
    souped = load_weights(tmp_path / "soup")
    states = [load_weights(d) for d in dirs]
    naive_errors = 0
    for name, ours in souped.items():
        assert ours.dtype == torch.bfloat16
        exact = sum(w * s[name].double() for w, s in zip(weights, states))
        assert within_half_bf16_ulp(ours, exact).all(), name  # accumulated wide, rounded once
        in_bf16 = states[0][name] * weights[0] + states[1][name] * weights[1] + states[2][name] * weights[2]
        naive_errors += int((~within_half_bf16_ulp(in_bf16, exact)).sum())
    assert naive_errors > 0, "accumulating in bf16 should round wrongly somewhere"


def test_sharded_inputs_and_sharded_output(tmp_path):
    from transformers import AutoModelForCausalLM

    dirs = [save_model(tmp_path / "a", seed=1, shard_size="10KB"), save_model(tmp_path / "b", seed=2)]
    assert len(weight_files(dirs[0])) > 1 and not (dirs[1] / soup.INDEX_FILE).exists()
    summary = soup.average_checkpoints(dirs, [0.5, 0.5], tmp_path / "soup", max_shard_bytes=8000)
    out = tmp_path / "soup"
    index = json.loads((out / soup.INDEX_FILE).read_text())
    n = len(summary["files"])
    assert n > 2 and summary["files"] == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert set(index["weight_map"].values()) == set(summary["files"]) and not (out / soup.SINGLE_FILE).exists()
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in load_weights(out).values())
    for file in summary["files"]:  # a tensor bigger than the limit may sit alone in a shard
        with safe_open(str(out / file), "pt") as handle:
            sizes = [handle.get_slice(k).get_shape() for k in handle.keys()]
            assert len(sizes) == 1 or sum(torch.Size(s).numel() * 4 for s in sizes) <= 8000
    expected = weighted_mean(dirs, [0.5, 0.5])
    model = AutoModelForCausalLM.from_pretrained(out)
    for name, parameter in model.state_dict().items():
        torch.testing.assert_close(parameter, expected[name], rtol=1e-6, atol=1e-7)


def test_tied_weights_stay_tied(tmp_path):
    from transformers import AutoModelForCausalLM

    dirs = [save_model(tmp_path / f"in{i}", seed=i, tie_word_embeddings=True) for i in range(2)]
    assert "lm_head.weight" not in load_weights(dirs[0])
    soup.average_checkpoints(dirs, [], tmp_path / "soup", max_shard_bytes=10**9)
    assert load_weights(tmp_path / "soup").keys() == load_weights(dirs[0]).keys()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "soup")
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    expected = weighted_mean(dirs, [0.5, 0.5])["model.embed_tokens.weight"]
    torch.testing.assert_close(model.lm_head.weight.detach(), expected)


def test_copies_model_files_and_writes_its_own_metadata(tmp_path, pair):
    out = tmp_path / "soup"
    assert soup.main(["--inputs", *map(str, pair), "--weights", "0.5", "0.5", "--out", str(out),
                      "--seed", "3"]) is None
    copied = {p.name for p in pair[0].iterdir()} - {soup.SINGLE_FILE, artifacts.METADATA_FILE}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= copied
    assert copied | {soup.SINGLE_FILE, artifacts.METADATA_FILE, "distances.json"} == {p.name for p in out.iterdir()}
    for name in copied:
        assert (out / name).read_bytes() == (pair[0] / name).read_bytes()
    meta = json.loads((out / artifacts.METADATA_FILE).read_text())
    assert meta["stage"] == "soup" and meta["seed"] == 3
    assert meta["ingredients"] == [str(p) for p in pair] and meta["weights"] == [0.5, 0.5]
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tiny_tokenizer().get_vocab()


def test_lora_checkpoints_must_be_merged_before_souping(tmp_path):
    """mean(B) @ mean(A) != mean(B @ A): average merged LoRA models, never their factors."""
    import copy
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_config())
    factors, merged_dirs = [], []
    for seed in (1, 2):
        torch.manual_seed(seed)
        peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero; a trained adapter has B != 0
                torch.nn.init.normal_(parameter, std=0.5)
        layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
        factors.append((layer.lora_A["default"].weight.detach().clone(),
                        layer.lora_B["default"].weight.detach().clone(), layer.scaling["default"]))
        merged_dirs.append(tmp_path / f"merged{seed}")
        peft_model.merge_and_unload().save_pretrained(merged_dirs[-1])
        tiny_tokenizer().save_pretrained(merged_dirs[-1])

    base_q = base.model.layers[0].self_attn.q_proj.weight.detach()
    (a1, b1, scaling), (a2, b2, _) = factors
    mean_of_merged = base_q + scaling * (b1 @ a1 + b2 @ a2) / 2
    merge_of_mean_factors = base_q + scaling * ((b1 + b2) / 2) @ ((a1 + a2) / 2)
    assert not torch.allclose(mean_of_merged, merge_of_mean_factors, atol=1e-3)

    soup.average_checkpoints(merged_dirs, [0.5, 0.5], tmp_path / "soup", max_shard_bytes=10**9)
    souped = load_weights(tmp_path / "soup")
    torch.testing.assert_close(souped["model.layers.0.self_attn.q_proj.weight"], mean_of_merged)
    for name, tensor in weighted_mean(merged_dirs, [0.5, 0.5]).items():
        torch.testing.assert_close(souped[name], tensor)


def test_extrapolation_only_when_asked_and_then_exact(tmp_path, pair):
    """alpha = -0.5 on the line A -> B: weights (1.5, -0.5), refused by default (a negative weight is a typo)."""
    assert_refused(pair, [1.5, -0.5], tmp_path / "refused", "--weights", "-0.5", "allow-extrapolation")
    soup.average_checkpoints(pair, [1.5, -0.5], tmp_path / "line", max_shard_bytes=10**9, allow_extrapolation=True)
    expected = weighted_mean(pair, [1.5, -0.5])
    for name, tensor in load_weights(tmp_path / "line").items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-6)


def test_records_parameter_distances(tmp_path):
    dirs = [save_model(tmp_path / f"in{i}", seed=i) for i in range(3)]
    weights = [0.2, 0.3, 0.5]
    summary = soup.average_checkpoints(dirs, weights, tmp_path / "soup", max_shard_bytes=10**9, distances=True)
    recorded = json.loads((tmp_path / "soup" / "distances.json").read_text())
    assert recorded["l2_to_soup"] == summary["distances"]["l2_to_soup"]
    flat = [torch.cat([t.double().reshape(-1) for _, t in sorted(load_weights(d).items())]) for d in dirs]
    mean = sum(w * x for w, x in zip(weights, flat))
    for i in range(3):
        assert recorded["l2_to_soup"][i] == pytest.approx(float((flat[i] - mean).norm()), rel=1e-6)
        for j in range(3):
            assert recorded["l2_between"][i][j] == pytest.approx(float((flat[i] - flat[j]).norm()), rel=1e-6)
    assert recorded["l2_soup"] == pytest.approx(float(mean.norm()), rel=1e-6)


# --- refusals: one-line StageErrors naming the file or tensor, and no output directory ---

def assert_refused(inputs, weights, out: Path, *expected_fragments: str) -> str:
    with pytest.raises(artifacts.StageError) as caught:
        soup.average_checkpoints(inputs, weights, out, max_shard_bytes=10**9)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in expected_fragments:
        assert fragment in message, message
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))
    return message


def test_refuses_shape_mismatch(tmp_path, pair):
    rewrite_tensor(pair[1], "model.layers.1.mlp.up_proj.weight", value=torch.zeros(16, 16))
    assert_refused(pair, [], tmp_path / "soup", str(pair[1] / soup.SINGLE_FILE),
                   "model.layers.1.mlp.up_proj.weight", "shape")


def test_refuses_name_mismatch(tmp_path, pair):
    rewrite_tensor(pair[1], "model.norm.weight", new_name="model.final_norm.weight")
    assert_refused(pair, [], tmp_path / "soup", str(pair[1]), "model.norm.weight")


def test_refuses_dtype_mismatch(tmp_path, pair):
    name = "model.norm.weight"
    rewrite_tensor(pair[1], name, value=load_weights(pair[1])[name].to(torch.float16))
    assert_refused(pair, [], tmp_path / "soup", str(pair[1] / soup.SINGLE_FILE), name, "dtype")


def test_refuses_architecture_mismatch(tmp_path):
    dirs = [save_model(tmp_path / "a", seed=1), save_model(tmp_path / "b", seed=2, rms_norm_eps=1e-3)]
    assert_refused(dirs, [], tmp_path / "soup", str(dirs[1] / "config.json"), "rms_norm_eps")


def test_ignores_bookkeeping_config_fields(tmp_path, pair):
    config = json.loads((pair[1] / "config.json").read_text())
    config.update(_name_or_path="/elsewhere", transformers_version="0.0.1")
    (pair[1] / "config.json").write_text(json.dumps(config))
    soup.average_checkpoints(pair, [], tmp_path / "soup", max_shard_bytes=10**9)


def test_refuses_tokenizer_mismatch(tmp_path):
    other_vocab = [*TOKENIZER_VOCAB[:-1], "different"]
    dirs = [save_model(tmp_path / "a", seed=1), save_model(tmp_path / "b", seed=2, tokenizer=tiny_tokenizer(other_vocab))]
    assert_refused(dirs, [], tmp_path / "soup", str(dirs[1] / "tokenizer.json"), "tokenizer")


@pytest.mark.parametrize("weights,fragment", [([0.5, 0.6], "sum to"), ([1.5, -0.5], "-0.5"),
                                              ([1.0], "1 weights for 2 inputs"), ([0.5, float("nan")], "nan")])
def test_refuses_bad_weights(tmp_path, pair, weights, fragment):
    assert_refused(pair, weights, tmp_path / "soup", "--weights", fragment)


def test_refuses_missing_and_malformed_inputs(tmp_path, pair):
    assert_refused([pair[0], tmp_path / "nowhere"], [], tmp_path / "soup", str(tmp_path / "nowhere"), "not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused([pair[0], empty], [], tmp_path / "soup", str(empty), "no model.safetensors")
    sharded = save_model(tmp_path / "sharded", seed=3, shard_size="10KB")
    index_path = sharded / soup.INDEX_FILE
    index = json.loads(index_path.read_text())
    first_shard = sorted(set(index["weight_map"].values()))[0]
    elsewhere = next(name for name, shard in index["weight_map"].items() if shard != first_shard)
    index_path.write_text(json.dumps({"weight_map": {**index["weight_map"], elsewhere: first_shard}}))
    assert_refused([pair[0], sharded], [], tmp_path / "soup", str(index_path), elsewhere)
    (sharded / first_shard).unlink()
    assert_refused([pair[0], sharded], [], tmp_path / "soup", str(index_path), first_shard)
    index_path.write_text("{not json")
    assert_refused([pair[0], sharded], [], tmp_path / "soup", str(index_path), "invalid JSON")
    (pair[1] / soup.SINGLE_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage")
    assert_refused(pair, [], tmp_path / "soup", str(pair[1] / soup.SINGLE_FILE), "safetensors")


def test_refuses_differing_integer_tensors_and_leaves_no_output(tmp_path):
    """This check runs while writing: the temporary directory must still vanish."""
    dirs = []
    for i, steps in enumerate(([1, 2, 3], [1, 2, 4])):
        dirs.append(tmp_path / f"in{i}")
        dirs[-1].mkdir()
        save_file({"a.weight": torch.ones(4), "b.steps": torch.tensor(steps)}, dirs[-1] / soup.SINGLE_FILE)
        (dirs[-1] / "config.json").write_text("{}")
    assert_refused(dirs, [], tmp_path / "soup", str(dirs[1] / soup.SINGLE_FILE), "b.steps")


def test_cli_prints_one_line_and_returns_1(tmp_path, pair, capsys):
    rewrite_tensor(pair[1], "model.layers.0.self_attn.q_proj.weight", value=torch.zeros(8, 16))
    out = tmp_path / "soup"
    code = artifacts.run_main(soup.main, ["--inputs", *map(str, pair), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and not out.exists()
    assert err.count("\n") == 1 and err.startswith("error: ") and "q_proj" in err
    code = artifacts.run_main(soup.main, ["--inputs", *map(str, pair), "--weights", "0.7", "0.7", "--out", str(out)])
    assert code == 1 and "--weights" in capsys.readouterr().err
