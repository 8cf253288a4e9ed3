"""The embedded task: list transformations with a programmatic gold reward.

A prompt names an operation and a list of numbers, e.g. ``sort 5 2 8 1``; the
ideal response is the transformed list, ``1 2 5 8``. The gold reward stands in
for human judgement (as in reward-model over-optimisation studies):

    gold(y) = LCS(y, target) / n  -  extra_penalty * max(0, len(y) - n) / n

with ``n = len(target)``, so a perfect answer scores 1, an empty one 0, and
padding an answer with extra items costs as much as leaving items out.

The pieces that make the task a useful RLHF testbed (docs/embedded-task.md):
* demonstrations come from a *noisy teacher* that mostly drops items (and
  sometimes swaps, replaces or inserts one), so SFT
  models sit measurably below the best achievable gold reward;
* preference labels are sampled from a Bradley-Terry model on the gold reward;
* because the teacher's errors are mostly omissions, longer answers win most
  preference pairs, and a learned reward model picks up "longer is better" -
  which stops being true once the answer has all its items. Pushing that proxy
  hard makes gold stall or fall while proxy reward rises;
* out-of-distribution prompts are longer lists than any seen in training.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Callable, Sequence

OPERATIONS: dict[str, Callable[[list[int]], list[int]]] = {
    "copy": lambda xs: list(xs),
    "reverse": lambda xs: list(reversed(xs)),
    "sort": lambda xs: sorted(xs),
}
PROMPT_SUFFIX = "=>"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Sizes and noise of the embedded task (the `task:` block of the config)."""

    num_symbols: int = 20            # numbers 0 .. num_symbols-1
    min_len: int = 3                 # in-distribution list lengths
    max_len: int = 6
    ood_min_len: int = 7             # out-of-distribution: longer lists only
    ood_max_len: int = 8
    p_drop: float = 0.12             # teacher noise, per item, at noise scale 1
    p_swap: float = 0.08
    p_substitute: float = 0.05
    p_insert: float = 0.03
    extra_penalty: float = 1.0
    preference_temperature: float = 0.1
    operations: tuple[str, ...] = ("copy", "reverse", "sort")

    def __post_init__(self):
        unknown = [op for op in self.operations if op not in OPERATIONS]
        if unknown:
            raise ValueError(f"task.operations: unknown operation(s) {unknown}; known: {sorted(OPERATIONS)}")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError("task: need 1 <= min_len <= max_len")
        if not self.ood_min_len <= self.ood_max_len:
            raise ValueError("task: need ood_min_len <= ood_max_len")

    @property
    def vocabulary(self) -> list[str]:
        return [*self.operations, PROMPT_SUFFIX, *map(str, range(self.num_symbols))]


@dataclasses.dataclass(frozen=True)
class Problem:
    op: str
    numbers: tuple[int, ...]

    @property
    def prompt(self) -> str:
        return " ".join([self.op, *map(str, self.numbers)])

    @property
    def target(self) -> list[int]:
        return OPERATIONS[self.op](list(self.numbers))


def parse_prompt(prompt: str) -> Problem:
    words = prompt.split()
    if words and words[-1] == PROMPT_SUFFIX:
        words = words[:-1]
    if not words or words[0] not in OPERATIONS:
        raise ValueError(f"not an embedded-task prompt: {prompt!r}")
    try:
        numbers = tuple(int(w) for w in words[1:])
    except ValueError:
        raise ValueError(f"not an embedded-task prompt: {prompt!r}") from None
    if not numbers:
        raise ValueError(f"embedded-task prompt has no numbers: {prompt!r}")
    return Problem(words[0], numbers)


def parse_response(response: str) -> list[int | None]:
    """Response items; anything that is not a number becomes None (never matches)."""
    items: list[int | None] = []
    for word in response.split():
        items.append(int(word) if word.isdigit() else None)
    return items


def lcs_length(a: Sequence, b: Sequence) -> int:
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x is not None and x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def gold_reward(prompt: str, response: str, extra_penalty: float = 1.0) -> float:
    """The task's gold judge: 1 for the exact answer, 0 for an empty one."""
    target = parse_prompt(prompt).target
    items = parse_response(response)
    n = len(target)
    return lcs_length(items, target) / n - extra_penalty * max(0, len(items) - n) / n


def teacher_response(problem: Problem, rng: random.Random, spec: TaskSpec, noise: float = 1.0) -> str:
    """A noisy demonstration: mostly omissions, some swaps and wrong numbers, rare insertions."""
    items = problem.target
    kept = [x for x in items if rng.random() >= min(1.0, spec.p_drop * noise)]
    kept = [rng.randrange(spec.num_symbols) if rng.random() < min(1.0, spec.p_substitute * noise) else x
            for x in kept]
    for i in range(len(kept) - 1):
        if rng.random() < min(1.0, spec.p_swap * noise):
            kept[i], kept[i + 1] = kept[i + 1], kept[i]
    if rng.random() < min(1.0, spec.p_insert * noise * len(items)):
        kept.insert(rng.randrange(len(kept) + 1), rng.randrange(spec.num_symbols))
    return " ".join(map(str, kept))


def sample_problem(rng: random.Random, spec: TaskSpec, ood: bool = False) -> Problem:
    lo, hi = (spec.ood_min_len, spec.ood_max_len) if ood else (spec.min_len, spec.max_len)
    length = rng.randint(lo, hi)
    op = rng.choice(spec.operations)
    return Problem(op, tuple(rng.randrange(spec.num_symbols) for _ in range(length)))


def preference_pair(problem: Problem, rng: random.Random, spec: TaskSpec) -> dict:
    """Two teacher answers at random noise levels, labelled by Bradley-Terry on gold."""
    a = teacher_response(problem, rng, spec, noise=rng.uniform(0.3, 3.0))
    b = teacher_response(problem, rng, spec, noise=rng.uniform(0.3, 3.0))
    gold_a = gold_reward(problem.prompt, a, spec.extra_penalty)
    gold_b = gold_reward(problem.prompt, b, spec.extra_penalty)
    p_a_wins = 1.0 / (1.0 + math.exp(-(gold_a - gold_b) / spec.preference_temperature))
    if rng.random() < p_a_wins:
        chosen, rejected, gold_chosen, gold_rejected = a, b, gold_a, gold_b
    else:
        chosen, rejected, gold_chosen, gold_rejected = b, a, gold_b, gold_a
    return {"prompt": problem.prompt, "chosen": chosen, "rejected": rejected,
            "gold_chosen": gold_chosen, "gold_rejected": gold_rejected}
