"""Stage `prepare_data`: datasets and tokenizer for the embedded task.

Writes, under the output directory, Hugging Face datasets saved with
``save_to_disk`` and a tokenizer saved in Hugging Face format:

  tokenizer/      word-level tokenizer with a chat template (AutoTokenizer)
  pretrain/       messages: very noisy demonstrations, for the base model
  sft/            messages: noisy-teacher demonstrations
  prefs_train/    prompt, chosen, rejected (+ gold scores of both)
  prefs_eval/     held-out preference pairs for reward-model accuracy
  ppo_prompts/    prompt
  eval_id/        prompt, category (held-out in-distribution prompts)
  eval_ood/       prompt, category (longer lists than any seen in training)
  task.json       the task spec, read by the gold judge

`--source hub` prepares UltraChat / UltraFeedback instead (salsa.hub_data).
"""

from __future__ import annotations

import dataclasses
import math
import random

from salsa import artifacts
from salsa.args import arg, parse
from salsa.task import PROMPT_SUFFIX, Problem, TaskSpec, preference_pair, sample_problem, teacher_response

SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "<eos>", "unk_token": "<unk>"}
# "{user} =>" then " {assistant}<eos>": the model sees the same framing in
# every stage, and benchmark answer generation can use apply_chat_template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ message['content'] }} " + PROMPT_SUFFIX +
    "{% elif message['role'] == 'assistant' %} {{ message['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


@dataclasses.dataclass
class PrepareDataConfig:
    """Generate the embedded task's datasets and train its tokenizer."""

    out: str = arg(help="output directory")
    seed: int = arg(0, help="seed for every random draw of the task")
    num_symbols: int = arg(20, help="numbers in the lists are 0..num_symbols-1")
    min_len: int = arg(3, help="shortest in-distribution list")
    max_len: int = arg(6, help="longest in-distribution list")
    ood_min_len: int = arg(7, help="shortest out-of-distribution list")
    ood_max_len: int = arg(8, help="longest out-of-distribution list")
    p_drop: float = arg(0.12, help="teacher: chance to omit each item (noise scale 1)")
    p_swap: float = arg(0.08, help="teacher: chance to swap each adjacent pair")
    p_substitute: float = arg(0.05, help="teacher: chance to replace each item with a random number")
    p_insert: float = arg(0.03, help="teacher: chance per item of one spurious insertion")
    extra_penalty: float = arg(1.0, help="gold: cost of each item beyond the target length, relative to a missing one")
    preference_temperature: float = arg(0.1, help="Bradley-Terry temperature of the preference labeller")
    pretrain_noise: float = arg(3.0, help="teacher noise scale of the base model's pretraining text")
    n_pretrain: int = arg(4000, help="pretraining examples")
    n_sft: int = arg(4000, help="SFT demonstrations")
    n_prefs_train: int = arg(4000, help="training preference pairs")
    n_prefs_eval: int = arg(500, help="held-out preference pairs")
    n_ppo_prompts: int = arg(2000, help="PPO prompts")
    n_eval_id: int = arg(200, help="held-out in-distribution evaluation prompts")
    n_eval_ood: int = arg(200, help="out-of-distribution evaluation prompts")
    heldout_fraction: float = arg(0.25, help="most of a (length, operation) cell's prompts one held-out split "
                                            "may reserve")

    def task_spec(self) -> TaskSpec:
        names = {f.name for f in dataclasses.fields(TaskSpec)}
        return TaskSpec(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})

    def validate(self) -> None:
        self.task_spec()
        if not 0 < self.heldout_fraction <= 0.45:
            raise ValueError("heldout_fraction: must be in (0, 0.45] (two held-out splits share each cell)")


def build_tokenizer(spec: TaskSpec):
    """A word-level tokenizer over the task's vocabulary, in Hugging Face format."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    vocab = {token: i for i, token in enumerate([*specials, *spec.vocabulary])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, padding_side="left", **SPECIAL_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    tokenizer.model_max_length = 64
    return tokenizer


def _conversation(prompt: str, response: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def reserve_heldout(rng: random.Random, spec: TaskSpec, counts: dict[str, int], fraction: float) -> dict:
    """Held-out prompt pools per (list length, operation) cell, drawn before any training data.

    Each split in ``counts`` gets its own pool per cell, sized for its expected
    draws there with some slack but never more than ``fraction`` of the cell's
    possible prompts, so short-list cells (only num_symbols**length prompts)
    keep most of their prompts for training.
    """
    lengths = range(spec.min_len, spec.max_len + 1)
    cells = [(length, op) for length in lengths for op in spec.operations]
    pools: dict[str, dict] = {name: {} for name in counts}
    taken: set[tuple] = set()
    for length, op in cells:
        space = spec.num_symbols ** length
        for name, n in counts.items():
            wanted = math.ceil(1.5 * n / len(cells)) + 4
            size = max(1, min(wanted, int(fraction * space)))
            pool: list[Problem] = []
            while len(pool) < size:
                numbers = tuple(rng.randrange(spec.num_symbols) for _ in range(length))
                if (op, numbers) not in taken:
                    taken.add((op, numbers))
                    pool.append(Problem(op, numbers))
            pools[name][(length, op)] = pool
    return pools


def generate(config: PrepareDataConfig) -> dict[str, list[dict]]:
    """All splits as lists of rows; pure function of the config.

    Held-out prompts are reserved per (length, operation) cell first; training
    draws then redraw any reserved prompt within its own cell, and held-out
    splits pick a cell exactly as training does, then a prompt from that
    cell's pool. So eval_id and prefs_eval follow the PPO prompts' length and
    operation distribution, and none of their prompts is seen in training.
    """
    spec = config.task_spec()
    rng = random.Random(config.seed)
    pools = reserve_heldout(rng, spec, {"eval_id": config.n_eval_id, "prefs_eval": config.n_prefs_eval},
                            config.heldout_fraction)
    reserved = {p.prompt for split in pools.values() for pool in split.values() for p in pool}

    def draws(n: int) -> list[Problem]:  # training prompts may repeat, like real data
        out = []
        for _ in range(n):
            problem = sample_problem(rng, spec)
            while problem.prompt in reserved:  # same cell, new numbers: keeps the cell frequencies
                problem = Problem(problem.op, tuple(rng.randrange(spec.num_symbols) for _ in problem.numbers))
            out.append(problem)
        return out

    def heldout(name: str, n: int) -> list[Problem]:
        """Cells drawn as sample_problem draws them; prompts unique within a cell until its pool runs out."""
        used = {cell: 0 for cell in pools[name]}
        out = []
        for _ in range(n):
            cell = sample_problem(rng, spec)
            key = (len(cell.numbers), cell.op)
            pool = pools[name][key]
            if used[key] and used[key] % len(pool) == 0:
                rng.shuffle(pool)
            out.append(pool[used[key] % len(pool)])
            used[key] += 1
        return out

    pretrain = [{"messages": _conversation(p.prompt, teacher_response(p, rng, spec, config.pretrain_noise))}
                for p in draws(config.n_pretrain)]
    sft = [{"messages": _conversation(p.prompt, teacher_response(p, rng, spec))} for p in draws(config.n_sft)]
    prefs_train = [preference_pair(p, rng, spec) for p in draws(config.n_prefs_train)]
    ppo_prompts = [{"prompt": p.prompt} for p in draws(config.n_ppo_prompts)]
    eval_id = heldout("eval_id", config.n_eval_id)
    prefs_eval = [preference_pair(p, rng, spec) for p in heldout("prefs_eval", config.n_prefs_eval)]
    eval_ood = ood_problems(rng, spec, config.n_eval_ood)
    return {
        "pretrain": pretrain,
        "sft": sft,
        "prefs_train": prefs_train,
        "prefs_eval": prefs_eval,
        "ppo_prompts": ppo_prompts,
        "eval_id": [{"prompt": p.prompt, "category": p.op} for p in eval_id],
        "eval_ood": [{"prompt": p.prompt, "category": p.op} for p in eval_ood],
    }


def ood_problems(rng: random.Random, spec: TaskSpec, n: int) -> list[Problem]:
    """Longer lists than any in training, so unseen by construction; unique where the space allows."""
    out: list[Problem] = []
    seen: set[str] = set()
    for _ in range(100 * n):
        if len(out) == n:
            break
        problem = sample_problem(rng, spec, ood=True)
        if problem.prompt not in seen:
            seen.add(problem.prompt)
            out.append(problem)
    return out


def split_source(argv: list[str]) -> tuple[str, list[str]]:
    """`--source embedded|hub` picks the generator; every other flag belongs to it."""
    argv = list(argv)
    if "--source" not in argv:
        return "embedded", argv
    at = argv.index("--source")
    source = argv[at + 1] if at + 1 < len(argv) else ""
    if source not in ("embedded", "hub"):
        raise SystemExit(f"error: --source: expected embedded or hub, got {source!r}")
    return source, argv[:at] + argv[at + 2:]


def main(argv: list[str] | None = None) -> None:
    import sys

    from datasets import Dataset

    source, argv = split_source(sys.argv[1:] if argv is None else argv)
    if source == "hub":  # UltraChat / UltraFeedback: salsa.hub_data
        from salsa import hub_data
        return hub_data.main(argv)
    config = parse(PrepareDataConfig, argv)
    splits = generate(config)
    with artifacts.atomic_dir(config.out) as tmp:
        build_tokenizer(config.task_spec()).save_pretrained(tmp / "tokenizer")
        for name, rows in splits.items():
            Dataset.from_list(rows).save_to_disk(str(tmp / name))
        artifacts.write_json(tmp / "task.json", {"kind": "embedded", **dataclasses.asdict(config.task_spec())})
        artifacts.write_metadata(tmp, "prepare_data", config, config.seed,
                                 extra={"sizes": {k: len(v) for k, v in splits.items()}})
    print(f"prepare_data: wrote {', '.join(f'{k}={len(v)}' for k, v in splits.items())} to {config.out}")


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
