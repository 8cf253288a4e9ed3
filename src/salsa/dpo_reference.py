"""Stage `dpo_reference`: the reference model's log-probs of every preference pair, once.

DPO-family losses only need log pi_ref(chosen | prompt) and log pi_ref(rejected | prompt),
which do not depend on beta, the loss or the policy. Computing them once per reference
model and caching them as an artifact (results/<exp>/dpo_ref/<model>/) means a beta
sweep, or DPO and IPO against the same soup, never runs the reference again.

Pairs are tokenised as the reward model reads them (salsa.reward.encode_pairs): the
generation prompt, then the response and EOS. The cache records a hash of those token
ids, so a DPO run refuses a cache built from other data or another tokenizer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from salsa import artifacts, distributed
from salsa.args import arg, parse
from salsa.modeling import (default_device, disable_dropout, load_causal_lm, load_tokenizer, mixed_precision_mode,
                            response_logprobs, torch_dtype)

LOGPROBS_FILE = "logprobs.safetensors"
SPLITS = ("prefs_train", "prefs_eval")


@dataclasses.dataclass
class DPOReferenceConfig:
    """Cache a reference model's summed response log-probs on every preference pair."""

    model: str = arg(help="reference model (model directory or Hub id)")
    data: str = arg(help="prepared data directory with prefs_train/ and prefs_eval/")
    out: str = arg(help="output directory: logprobs.safetensors, salsa_meta.json")
    batch_size: int = arg(64, help="pairs per forward pass")
    dtype: str = arg("float32", help="dtype the reference is loaded in (the DPO stage's dtype)")
    mixed_precision: str = arg("no", help="autocast of the DPO policy (the DPO stage's mixed_precision); "
                                          "the reference runs under the same one")
    weights_dtype: str = arg("float32", help="dtype the reference computes in: a fully trained DPO policy keeps "
                                             "fp32 weights (float32); a LoRA policy or DeepSpeed's keeps `dtype`")
    threads: int = arg(0, help="torch CPU threads (0 = torch default)")


@dataclasses.dataclass
class EncodedPairs:
    """Prompt tokens and response tokens (with EOS) of each pair, unpadded."""

    queries: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]

    def __len__(self) -> int:
        return len(self.queries)

    def fingerprint(self) -> str:
        payload = json.dumps([self.queries, self.chosen, self.rejected], separators=(",", ":")).encode()
        return hashlib.sha256(payload).hexdigest()[:16]


def encode_preference_pairs(tokenizer, pairs: dict[str, list]) -> EncodedPairs:
    """The tokens salsa.reward.encode_pairs builds, with the prompt/response boundary kept."""
    queries, chosen, rejected = [], [], []
    for prompt, good, bad in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"]):
        query = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                              add_generation_prompt=True)
        queries.append(tokenizer(query, add_special_tokens=False)["input_ids"])
        for responses, text in ((chosen, good), (rejected, bad)):
            responses.append(tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    return EncodedPairs(queries, chosen, rejected)


def pair_batch(pairs: EncodedPairs, idx, pad_id: int):
    """Chosen rows then rejected rows: left-padded prompts, right-padded responses.

    Returns (input_ids, attention_mask, response_mask, query_length) for 2 * len(idx) rows.
    """
    idx = [int(i) for i in idx]
    queries = [pairs.queries[i] for i in idx] * 2
    responses = [pairs.chosen[i] for i in idx] + [pairs.rejected[i] for i in idx]
    q_len, r_len = max(map(len, queries)), max(map(len, responses))
    ids = torch.full((len(queries), q_len + r_len), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (query, response) in enumerate(zip(queries, responses)):
        ids[row, q_len - len(query):q_len] = torch.tensor(query)
        ids[row, q_len:q_len + len(response)] = torch.tensor(response)
        mask[row, q_len - len(query):q_len + len(response)] = 1
    return ids, mask, mask[:, q_len:].float(), q_len


def sequence_logprobs(model, ids, mask, response_mask, query_length) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the responses (tensors on the model's device): (chosen [B], rejected [B])."""
    return (response_logprobs(model, ids, mask, query_length) * response_mask).sum(1).chunk(2)


@torch.no_grad()
def all_logprobs(model, pairs: EncodedPairs, pad_id: int, batch_size: int,
                 autocast=contextlib.nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        ids, mask, response_mask, q_len = pair_batch(pairs, range(start, min(start + batch_size, len(pairs))), pad_id)
        with autocast():
            c, r = sequence_logprobs(model, ids.to(model.device), mask.to(model.device),
                                     response_mask.to(model.device), q_len)
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    return torch.cat(chosen), torch.cat(rejected)


def load_split(tokenizer, data: str, split: str) -> EncodedPairs:
    from salsa.reward import load_pairs

    return encode_preference_pairs(tokenizer, load_pairs(f"{data}/{split}"))


def precision(weights_dtype: str, autocast: str) -> dict:
    """How the reference's log-probs were computed: they must be the policy's own, or the initial DPO
    margin is not 0 (bf16 weights against an fp32 policy give a spurious preference)."""
    return {"weights_dtype": weights_dtype, "autocast": autocast}


def read_cache(directory: str, expected: dict[str, str], reference: str | None = None,
               expected_precision: dict | None = None) -> dict[str, torch.Tensor]:
    """The cached log-probs, after checking they were built from the same tokens (``expected``: split -> hash),
    from the ``reference`` model (its salsa_meta.json digest) and at ``expected_precision``."""
    from safetensors.torch import load_file

    path = Path(directory) / LOGPROBS_FILE
    if not path.is_file():
        raise artifacts.StageError(f"{path}: reference log-probs not found (run python -m salsa.dpo_reference)")
    meta = artifacts.read_json(Path(directory) / artifacts.METADATA_FILE)
    for split, fingerprint in expected.items():
        if meta.get("fingerprints", {}).get(split) != fingerprint:
            raise artifacts.StageError(f"{path}: built from other {split} tokens than this run's data "
                                       f"({meta.get('fingerprints', {}).get(split)} vs {fingerprint})")
    if reference is not None and meta.get("reference_identity") != input_identity(reference):
        raise artifacts.StageError(f"{path}: computed with {meta.get('reference')!r}, not with the reference "
                                   f"{reference!r} (identity {meta.get('reference_identity')} vs "
                                   f"{input_identity(reference)})")
    if expected_precision is not None and meta.get("precision") != expected_precision:
        raise artifacts.StageError(f"{path}: computed at {meta.get('precision')}, but this policy trains at "
                                   f"{expected_precision}; rerun dpo_reference with --weights-dtype "
                                   f"{expected_precision['weights_dtype']} --mixed-precision "
                                   f"{expected_precision['autocast']}")
    return load_file(str(path))


def input_identity(model: str) -> str:
    """A model's identity: its artifact's salsa_meta.json digest, or the Hub id itself."""
    from salsa.training import input_identity as identity

    return identity(model) if Path(model).exists() else model


def main(argv: list[str] | None = None) -> None:
    from safetensors.torch import save_file

    config = parse(DPOReferenceConfig, argv)
    artifacts.set_threads(config.threads)
    autocast_mode = mixed_precision_mode(config.dtype, config.mixed_precision)
    device = default_device()
    tokenizer = load_tokenizer(config.model)
    model = load_causal_lm(config.model, config.dtype)
    disable_dropout(model)
    model = distributed.frozen(model, device, torch_dtype(config.weights_dtype))
    autocast = autocast_context(device, autocast_mode)
    tensors, fingerprints = {}, {}
    for split in SPLITS:
        pairs = load_split(tokenizer, config.data, split)
        fingerprints[split] = pairs.fingerprint()
        tensors[f"{split}/chosen"], tensors[f"{split}/rejected"] = all_logprobs(
            model, pairs, tokenizer.pad_token_id, config.batch_size, autocast)
    with artifacts.atomic_dir(config.out) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / LOGPROBS_FILE))
        artifacts.write_metadata(tmp, "dpo_reference", config, None,
                                 extra={"fingerprints": fingerprints, "reference": config.model,
                                        "reference_identity": input_identity(config.model),
                                        "precision": precision(config.weights_dtype, autocast_mode)})
    counts = ", ".join(f"{s} {len(tensors[f'{s}/chosen'])}" for s in SPLITS)
    print(f"dpo_reference: log-probs of {counts} pairs under {config.model} ({config.weights_dtype} weights, "
          f"autocast {autocast_mode}) on {device} -> {config.out}")


def autocast_context(device: torch.device, mode: str):
    """The autocast accelerate applies for ``mode`` (no, bf16, fp16), as a context factory."""
    if mode == "no":
        return contextlib.nullcontext
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]
    return lambda: torch.autocast(device.type, dtype=dtype)


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
