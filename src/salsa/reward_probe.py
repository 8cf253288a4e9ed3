"""Stage `reward_probe`: the linear probe WARM's reward replicas start from.

WARM (Ramé et al. 2024) fine-tunes every reward-model replica from one shared initialisation whose score
head was first trained alone on the frozen backbone (linear probing, after Kumar et al. 2022). The replicas
then differ only in what their seeds change (data order), stay in one basin and can be weight-averaged.
Without it each replica draws its own random head and their average mixes unrelated heads.

The backbone is frozen, so its feature at the scored token (the last one, as salsa.modeling.sequence_scores
reads it) is computed once per pair; the head is then a Bradley-Terry logistic regression on
feature(chosen) - feature(rejected), trained with Adam. Writes score_head.safetensors (the head's tensors
under the model's own names; `python -m salsa.reward --init-head` loads it) and probe_eval.json.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from salsa import artifacts
from salsa.args import arg, parse

HEAD_FILE = "score_head.safetensors"


@dataclasses.dataclass
class RewardProbeConfig:
    """Train the reward model's score head alone on its frozen initialisation (WARM's linear probing)."""

    model: str = arg(help="the reward models' initialisation (a causal-LM directory, e.g. the base model)")
    data: str = arg(help="prepared data directory (prefs_train/, prefs_eval/)")
    out: str = arg(help="output directory: score_head.safetensors, probe_eval.json")
    seed: int = arg(0, help="head init and data order")
    steps: int = arg(500, help="Adam steps on the head")
    batch_size: int = arg(256, help="preference pairs per step")
    lr: float = arg(1e-2, help="learning rate")
    max_examples: int = arg(0, help="use only the first N training pairs (0 = all)")
    threads: int = arg(0, help="torch CPU threads (0 = torch default)")


def head_parameters(model) -> dict[str, torch.nn.Parameter]:
    from salsa.modeling import score_head

    head = score_head(model)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: p for p in head.parameters()}


def load_head(model, path: str) -> None:
    """Copy a probe's head into `model` (a reward model with the same architecture); refuse a mismatch."""
    weights = load_file(path)
    head = head_parameters(model)
    if set(weights) != set(head) or any(weights[n].shape != p.shape for n, p in head.items()):
        raise artifacts.StageError(f"{path}: head tensors {({n: tuple(t.shape) for n, t in weights.items()})} do not "
                                   f"match the model's {({n: tuple(p.shape) for n, p in head.items()})}")
    with torch.no_grad():
        for name, parameter in head.items():
            parameter.copy_(weights[name].to(parameter.dtype))


@torch.no_grad()
def pair_features(model, tokenizer, pairs: dict[str, list], batch_size: int = 256) -> torch.Tensor:
    """feature(chosen) - feature(rejected) per pair: the backbone's last hidden state at the scored token."""
    from salsa.modeling import last_token_index, position_ids_from_mask
    from salsa.reward import encode_pairs

    backbone = getattr(model, model.base_model_prefix)
    out = []
    for i in range(0, len(pairs["prompt"]), batch_size):
        sides = []
        for side in ("chosen", "rejected"):
            ids, mask = encode_pairs(tokenizer, pairs["prompt"][i:i + batch_size], pairs[side][i:i + batch_size])
            hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                              use_cache=False).last_hidden_state
            sides.append(hidden[torch.arange(len(ids)), last_token_index(mask)].float())
        out.append(sides[0] - sides[1])
    return torch.cat(out)


def probe_accuracy(weight: torch.Tensor, features: torch.Tensor) -> float:
    margin = features @ weight.T.squeeze(-1)
    return ((margin > 0).float() + 0.5 * (margin == 0).float()).mean().item()


def main(argv: list[str] | None = None) -> None:
    from salsa.modeling import disable_dropout, load_reward_model, load_tokenizer
    from salsa.reward import load_pairs

    config = parse(RewardProbeConfig, argv)
    artifacts.set_threads(config.threads)
    artifacts.seed_everything(config.seed)
    tokenizer = load_tokenizer(config.model)
    train = load_pairs(f"{config.data}/prefs_train", max_examples=config.max_examples)
    held_out = load_pairs(f"{config.data}/prefs_eval")
    model = load_reward_model(config.model).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)
    head = head_parameters(model)
    if len(head) != 1:
        raise artifacts.StageError(f"{config.model}: expected a score head of one weight matrix, got {sorted(head)}")
    name, weight = next(iter(head.items()))
    features, eval_features = pair_features(model, tokenizer, train), pair_features(model, tokenizer, held_out)
    start_accuracy = probe_accuracy(weight.detach().float(), eval_features)
    start_loss = -F.logsigmoid(features @ weight.detach().float().T.squeeze(-1)).mean().item()
    probe = weight.detach().float().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([probe], lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(config.steps):
        batch = features[torch.randint(0, len(features), (config.batch_size,), generator=generator)]
        loss = -F.logsigmoid(batch @ probe.T.squeeze(-1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    report = {"eval_accuracy": probe_accuracy(probe.detach(), eval_features), "eval_accuracy_random_head": start_accuracy,
              "train_loss": -F.logsigmoid(features @ probe.detach().T.squeeze(-1)).mean().item(),
              "train_loss_random_head": start_loss,
              "pairs": len(features), "eval_pairs": len(eval_features)}
    with artifacts.atomic_dir(config.out) as tmp:
        save_file({name: probe.detach().to(weight.dtype).contiguous()}, str(tmp / HEAD_FILE))
        artifacts.write_json(tmp / "probe_eval.json", report)
        artifacts.write_metadata(tmp, "reward_probe", config, config.seed, extra=report)
    print(f"reward_probe: held-out accuracy {report['eval_accuracy']:.3f} with the probed head "
          f"({start_accuracy:.3f} with a random one) -> {config.out}")


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
