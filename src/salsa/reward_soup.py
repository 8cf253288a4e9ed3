"""Stage `reward_soup`: a weight-averaged soup of reward models (WARM, Ramé et al. 2024).

The averaging is the soup stage's own (salsa.soup.average_checkpoints): every tensor,
the score head `score.weight` included, is the weighted mean of the ingredients'.

What a soup cannot inherit is its normalisation. PPO reads (r - mean) / std with the
mean and std of the reward on the starting policy's samples. The soup's score of a
response is not the mean of the ingredients' scores (the network is not linear in its
weights), so neither averaging the ingredients' means and stds nor copying the first
one's describes the soup. They are recomputed here, exactly as the reward_model stage
computes them (same policy, prompts, sampling seed and settings), as is the held-out
accuracy on prefs_eval.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from salsa import artifacts, distributed
from salsa.args import arg, parse
from salsa.modeling import default_device, load_reward_model, load_tokenizer
from salsa.reward import NORMALIZATION_FILE, evaluate_pairs, load_pairs, normalization_stats
from salsa.soup import average_checkpoints


@dataclasses.dataclass
class RewardSoupConfig:
    """Average reward models' weights, then renormalise the soup against a policy's samples."""

    inputs: list[str] = arg(help="reward-model directories to average (same architecture and tokenizer)")
    out: str = arg(help="output reward-model directory")
    data: str = arg(help="prepared data directory (prefs_eval/, ppo_prompts/)")
    normalize_policy: str = arg(help="policy whose samples define mean 0 / std 1 (as for the ingredients)")
    weights: list[float] = arg([], help="one weight per input, non-negative, summing to 1 (empty: uniform)")
    seed: int = arg(0, help="sampling seed of the normalisation samples")
    normalize_samples: int = arg(256, help="policy samples used for the normalisation")
    max_new_tokens: int = arg(16, help="response length of normalisation samples")
    temperature: float = arg(1.0, help="sampling temperature of normalisation samples (match PPO's)")
    dtype: str = arg("float32", help="weights dtype when scoring")
    max_shard_size_mb: float = arg(2000.0, help="split the output into shards above this size (MB)")
    threads: int = arg(0, help="torch CPU threads (0 = torch default)")


def renormalise(directory: Path, config: RewardSoupConfig) -> dict:
    """Held-out accuracy and normalisation of the soup in ``directory``, written beside its weights."""
    from datasets import load_from_disk

    tokenizer = load_tokenizer(str(directory))
    model = distributed.frozen(load_reward_model(str(directory), config.dtype), default_device())
    model.config.pad_token_id = tokenizer.pad_token_id
    prompts = list(load_from_disk(f"{config.data}/ppo_prompts")["prompt"])[:config.normalize_samples]
    normalization = normalization_stats(model, tokenizer, config.normalize_policy, prompts, config)
    report = {"eval": evaluate_pairs(model, tokenizer, load_pairs(f"{config.data}/prefs_eval"))}
    artifacts.write_json(directory / NORMALIZATION_FILE, normalization)
    artifacts.write_json(directory / "reward_eval.json", report)
    ingredients = {path: artifacts.read_json(Path(path) / "reward_eval.json")["eval"]["accuracy"]
                   for path in config.inputs if (Path(path) / "reward_eval.json").is_file()}
    return {"eval_accuracy": report["eval"]["accuracy"], "normalization": normalization,
            "ingredient_eval_accuracy": ingredients}


def main(argv: list[str] | None = None) -> None:
    config = parse(RewardSoupConfig, argv)
    artifacts.set_threads(config.threads)
    finished = {}
    summary = average_checkpoints([Path(p) for p in config.inputs], config.weights, Path(config.out),
                                  int(config.max_shard_size_mb * 10**6), config=config, seed=config.seed,
                                  finish=lambda tmp: finished.update(renormalise(tmp, config)) or finished)
    print(f"reward_soup: averaged {summary['tensors']} tensors of {len(config.inputs)} reward models; held-out "
          f"accuracy {finished['eval_accuracy']:.3f} (ingredients "
          f"{', '.join(f'{a:.3f}' for a in finished['ingredient_eval_accuracy'].values())}), normalisation mean "
          f"{finished['normalization']['mean']:.3f} std {finished['normalization']['std']:.3f} -> {config.out}")


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
