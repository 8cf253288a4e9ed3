"""Stage `evaluate`: sample from one model and measure what the tables report.

For the in-distribution and the out-of-distribution prompts: the gold reward
(embedded task), the normalised reward-model score, KL to the model's own
reference and to the first SFT model, mean response length and the fraction
of empty responses (reference collapse shows up here first).

KL is estimated on the model's own samples at temperature 1 as the mean over
samples of sum_t [log pi(y_t) - log pi_ref(y_t)] - the sequence-level KL.
"""

from __future__ import annotations

import dataclasses
import json
import math

import torch

from salsa import artifacts
from salsa.args import arg, parse
from salsa.generation import decode_responses, encode_prompts, sample
from salsa.modeling import (default_device, load_causal_lm, load_reward_model, load_tokenizer, response_logprobs,
                            sequence_scores)
from salsa.ppo import gold_judge
from salsa.reward import load_normalization

SPLITS = {"id": "eval_id", "ood": "eval_ood"}


@dataclasses.dataclass
class EvaluateConfig:
    """Sample from a model on held-out prompts and score the samples."""

    model: str = arg(help="model directory to evaluate")
    reward_model: str = arg(help="reward-model directory")
    data: str = arg(help="prepared data directory (eval_id/, eval_ood/, task.json)")
    out: str = arg(help="output directory: metrics.json, samples.jsonl")
    reference: str = arg("", help="the model's KL reference (empty: none, e.g. for SFT models)")
    first_sft: str = arg("", help="the first SFT model, the common yardstick for KL")
    seed: int = arg(0, help="sampling seed")
    max_new_tokens: int = arg(16, help="response length limit")
    temperature: float = arg(1.0, help="sampling temperature (1 = the model's own distribution)")
    batch_size: int = arg(128, help="prompts per forward pass")
    max_prompts: int = arg(0, help="evaluate only the first N prompts of each split (0 = all)")
    dtype: str = arg("float32", help="weights dtype")
    threads: int = arg(0, help="torch CPU threads (0 = torch default)")


@torch.no_grad()
def evaluate_split(prompts, categories, model, tokenizer, reward_model, norm, others: dict, gold, config,
                   generator) -> tuple[dict, list[dict]]:
    records = []
    for start in range(0, len(prompts), config.batch_size):
        batch = prompts[start:start + config.batch_size]
        ids, mask = encode_prompts(tokenizer, batch, model.device)
        rollout = sample(model, ids, mask, max_new_tokens=config.max_new_tokens, eos_id=tokenizer.eos_token_id,
                         pad_id=tokenizer.pad_token_id, temperature=config.temperature, generator=generator)
        texts = decode_responses(tokenizer, rollout)
        full_ids, full_mask, q_len = rollout.input_ids, rollout.attention_mask, rollout.query_ids.shape[1]
        response_mask = rollout.response_mask.float()
        # KL between the distributions actually sampled: both at the sampling temperature
        t = config.temperature
        own = response_logprobs(model, full_ids, full_mask, q_len, t) * response_mask
        kls = {name: (own - response_logprobs(other, full_ids, full_mask, q_len, t) * response_mask).sum(1)
               for name, other in others.items()}
        proxy = (sequence_scores(reward_model, full_ids, full_mask) - norm[0]) / norm[1]
        lengths = rollout.response_lengths - rollout.ended_with_eos.long()
        for i, (prompt, text) in enumerate(zip(batch, texts)):
            records.append({
                "prompt": prompt, "category": categories[start + i], "response": text,
                "gold": gold(prompt, text) if gold else None, "proxy": proxy[i].item(),
                "length": int(lengths[i]), "eos": bool(rollout.ended_with_eos[i]),
                **{f"kl_{name}": kl[i].item() for name, kl in kls.items()},
            })
    def mean(key):
        values = [r[key] for r in records if r.get(key) is not None]
        return sum(values) / len(values) if values else math.nan
    metrics = {"gold": mean("gold"), "proxy": mean("proxy"), "length": mean("length"),
               "empty": sum(r["length"] == 0 for r in records) / len(records),
               "no_eos": sum(not r["eos"] for r in records) / len(records),
               "kl_ref": mean("kl_ref") if "ref" in others else math.nan,
               "kl_sft": mean("kl_sft") if "sft" in others else math.nan}
    return metrics, records


def main(argv: list[str] | None = None) -> None:
    config = parse(EvaluateConfig, argv)
    artifacts.set_threads(config.threads)
    artifacts.seed_everything(config.seed)
    splits = {split: artifacts.load_split(f"{config.data}/{directory}", ("prompt",))
              for split, directory in SPLITS.items()}  # before the models: a bad split fails in a second
    device = default_device()
    tokenizer = load_tokenizer(config.model)
    model = load_causal_lm(config.model, config.dtype).to(device).eval()
    reward_model = load_reward_model(config.reward_model, config.dtype).to(device).eval()
    norm = load_normalization(config.reward_model)
    others = {}
    if config.reference:
        others["ref"] = load_causal_lm(config.reference, config.dtype).to(device).eval()
    if config.first_sft:
        others["sft"] = load_causal_lm(config.first_sft, config.dtype).to(device).eval()
    gold = gold_judge(config.data)
    generator = torch.Generator().manual_seed(config.seed)
    metrics, all_records = {}, []
    for split, dataset in splits.items():
        prompts = list(dataset["prompt"])
        categories = list(dataset["category"]) if "category" in dataset.column_names else ["all"] * len(prompts)
        if config.max_prompts:
            prompts, categories = prompts[:config.max_prompts], categories[:config.max_prompts]
        split_metrics, records = evaluate_split(prompts, categories, model, tokenizer, reward_model, norm, others,
                                                gold, config, generator)
        metrics.update({f"{key}_{split}": value for key, value in split_metrics.items()})
        all_records += [{"split": split, **r} for r in records]
    with artifacts.atomic_dir(config.out) as tmp:
        artifacts.write_json(tmp / "metrics.json", metrics)
        with open(tmp / "samples.jsonl", "w") as handle:
            for record in all_records:
                handle.write(json.dumps(record) + "\n")
        artifacts.write_metadata(tmp, "evaluate", config, config.seed)
    print("evaluate: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.endswith("_id")))


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
