"""Judges that score instead of write: the reward model and the embedded task's gold function.

Documented mappings (docs/judging.md):

Reward model (scores are normalised: z = (raw - mean) / std from reward_normalization.json)
  pairwise   d = z(A) - z(B):  |d| < 0.1 -> A=B;  0.1 <= |d| < 1.0 -> A>B / B>A;  |d| >= 1.0 -> A>>B / B>>A
             (thresholds in reward standard deviations; --reward-tie-threshold / --reward-strong-threshold)
  single     rating = 1 + 9 * sigmoid(z)   (z = 0, an average answer, rates 5.5; range (1, 10))

Gold judge (embedded task; gold = 1 for the exact answer, 0 for an empty one)
  pairwise   d = gold(A) - gold(B): |d| < 0.05 -> A=B; 0.05 <= |d| < 0.25 -> A>B; |d| >= 0.25 -> A>>B
  single     rating = 1 + 9 * clip(gold, 0, 1)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from salsa.judges.base import Messages, ScoreJudge

NORMALIZATION_FILE = "reward_normalization.json"


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def reward_to_rating(z: float) -> float:
    return 1.0 + 9.0 * sigmoid(z)


def gold_to_rating(gold: float) -> float:
    return 1.0 + 9.0 * min(1.0, max(0.0, gold))


def _prompt_and_response(conversation: Messages) -> tuple[str, str]:
    users = [m["content"] for m in conversation if m["role"] == "user"]
    replies = [m["content"] for m in conversation if m["role"] == "assistant"]
    if not users or not replies:
        raise ValueError("a scored conversation needs a user turn and an assistant turn")
    return users[-1], replies[-1]


class GoldJudge(ScoreJudge):
    """The embedded task's programmatic judge (salsa.task.gold_reward)."""

    def __init__(self, extra_penalty: float = 1.0, tie_threshold: float = 0.05, strong_threshold: float = 0.25):
        super().__init__()
        self.name = "gold"
        self.extra_penalty = extra_penalty
        self.tie_threshold, self.strong_threshold = tie_threshold, strong_threshold

    def score(self, conversations: Sequence[Messages], progress: bool = True) -> list[float]:
        from salsa.task import gold_reward

        scores = []
        for conversation in conversations:
            prompt, response = _prompt_and_response(conversation)
            scores.append(gold_reward(prompt, response, self.extra_penalty))
        self.stats.add("requests", len(scores))
        return scores

    def rate(self, score: float) -> float:
        return gold_to_rating(score)

    @property
    def rating_rule(self) -> str:
        return "1+9*clip(gold,0,1)"


def read_normalization(model_dir: str | Path) -> tuple[float, float]:
    """(mean, std) from reward_normalization.json inside the model dir (or beside it)."""
    from salsa.artifacts import StageError

    model_dir = Path(model_dir)
    for path in (model_dir / NORMALIZATION_FILE, model_dir.parent / NORMALIZATION_FILE):
        if path.exists():
            try:
                payload = json.loads(path.read_text())
                mean, std = float(payload["mean"]), float(payload["std"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise StageError(f"{path}: expected {{\"mean\": m, \"std\": s}} ({type(err).__name__})") from None
            if not std > 0:
                raise StageError(f"{path}: std must be positive, got {std}")
            return mean, std
    raise StageError(f"{model_dir / NORMALIZATION_FILE}: file not found (reward normalisation)")


class RewardJudge(ScoreJudge):
    """A sequence-classification reward model (num_labels=1); input = its chat template."""

    def __init__(self, model_dir: str, batch_size: int = 16, device: str = "auto",
                 tie_threshold: float = 0.1, strong_threshold: float = 1.0) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from salsa.judges.local import pick_device

        super().__init__()
        self.name = f"reward:{Path(model_dir).name}"
        self.mean, self.std = read_normalization(model_dir)
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"   # an over-long input keeps its response, not its prompt
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype="auto").to(self.device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = max(1, int(batch_size))
        self.tie_threshold, self.strong_threshold = tie_threshold, strong_threshold

    def raw_scores(self, conversations: Sequence[Messages], progress: bool = True) -> list[float]:
        import torch
        from tqdm import tqdm

        texts = [self.tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        raw: list[float] = []
        for start in tqdm(range(0, len(texts), self.batch_size), desc="reward", disable=not progress,
                          mininterval=1.0):
            batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                   add_special_tokens=False, truncation=bool(limit), max_length=limit)
            with torch.no_grad():
                logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits
            raw.extend(logits[:, 0].float().tolist())
        self.stats.add("requests", len(raw))
        return raw

    def score(self, conversations: Sequence[Messages], progress: bool = True) -> list[float]:
        return [(r - self.mean) / self.std for r in self.raw_scores(conversations, progress)]

    def rate(self, score: float) -> float:
        return reward_to_rating(score)

    @property
    def rating_rule(self) -> str:
        return "1+9*sigmoid(z)"
