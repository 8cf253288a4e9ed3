"""A local transformers model as a text judge, in-process.

Requests are batched with left padding through the model's chat template. Greedy
decoding at temperature 0 (the judge protocols' default); seeded sampling otherwise.
"""

from __future__ import annotations

from typing import Sequence

from salsa.judges.base import ChatRequest, Completion, TextJudge
from salsa.judges.cache import JudgmentCache


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


class LocalJudge(TextJudge):
    def __init__(self, model_dir: str, batch_size: int = 8, max_new_tokens_cap: int | None = None,
                 device: str = "auto", seed: int = 0, cache: JudgmentCache | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__(str(model_dir), cache)
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").to(self.device).eval()
        self.batch_size = max(1, int(batch_size))
        self.max_new_tokens_cap = max_new_tokens_cap
        self.seed = seed

    def _complete_uncached(self, requests: Sequence[ChatRequest], progress: bool, desc: str) -> list[Completion]:
        from salsa.benchmarks.chat_generation import generate_chat

        settings = [(r.temperature, min(r.max_tokens, self.max_new_tokens_cap or r.max_tokens)) for r in requests]
        try:
            texts = generate_chat(self.model, self.tokenizer, [r.as_messages() for r in requests], settings,
                                  batch_size=self.batch_size, seed=self.seed, progress=progress, desc=desc)
        except RuntimeError as err:   # e.g. out of memory: report, do not crash the whole run
            self.stats.error(f"local generation failed: {err}")
            return [Completion(None, error=str(err))] * len(requests)
        self.stats.add("api_calls", len(requests))
        return [Completion(text) for text in texts]
