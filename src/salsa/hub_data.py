"""Stage `prepare_data`, source `hub`: UltraChat-200k and UltraFeedback-binarized.

Writes the layout the embedded task writes (see salsa.data), minus task.json:
there is no gold judge for real prompts, and PPO/evaluate run without one.

  tokenizer/    the model's tokenizer (only with --tokenizer)
  sft/          messages             <- UltraChat  train_sft
  pretrain/     the same rows as sft/ (only a tiny Llama trained from scratch reads it)
  prefs_train/  prompt, chosen, rejected, score_chosen, score_rejected  <- UltraFeedback train_prefs
  prefs_eval/   the same columns     <- UltraFeedback test_prefs
  ppo_prompts/  prompt               <- UltraFeedback train_gen
  eval_id/      prompt, category     <- UltraFeedback test_gen (held-out prompts of the PPO distribution)
  eval_ood/     prompt, category     <- UltraChat test_sft first user turns (another prompt source)

Every dataset argument is a Hub id or a local path: a directory saved with
save_to_disk, a .json/.jsonl/.parquet file, or a directory holding
<split>.jsonl / <split>-*.parquet files (the Hub repositories' own layout).
With HF_HUB_OFFLINE=1 a Hub id is read from its snapshot in the HF cache.
Rows are visited in a seeded random order and kept until each split has its
quota, so a subsample is a pure function of the seed and the source data.
Rows that are well-formed but unusable (empty turns, no assistant reply,
chosen == rejected, over a length limit) are dropped and counted in
salsa_meta.json; rows of the wrong shape stop the stage with a one-line error
naming the file and row.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Any, Callable

from salsa import artifacts
from salsa.args import arg, parse
from salsa.artifacts import StageError

ULTRACHAT = "HuggingFaceH4/ultrachat_200k"
ULTRAFEEDBACK = "HuggingFaceH4/ultrafeedback_binarized"
ROLES = {"system", "user", "assistant"}


@dataclasses.dataclass
class HubDataConfig:
    """Prepare UltraChat / UltraFeedback-binarized splits (Hub ids or local copies)."""

    out: str = arg(help="output directory")
    seed: int = arg(0, help="seed of the subsampling order")
    sft_dataset: str = arg(ULTRACHAT, help="SFT conversations (`messages`): Hub id or local path")
    sft_split: str = arg("train_sft", help="split of --sft-dataset for SFT")
    prefs_dataset: str = arg(ULTRAFEEDBACK, help="preference pairs (prompt, chosen, rejected): Hub id or local path")
    prefs_train_split: str = arg("train_prefs", help="split for reward-model training")
    prefs_eval_split: str = arg("test_prefs", help="split for reward-model accuracy")
    prompts_dataset: str = arg("", help="PPO and in-distribution eval prompts (default: --prefs-dataset)")
    ppo_split: str = arg("train_gen", help="split for PPO prompts")
    eval_id_split: str = arg("test_gen", help="split for held-out in-distribution prompts")
    ood_dataset: str = arg("", help="out-of-distribution eval prompts (default: --sft-dataset)")
    ood_split: str = arg("test_sft", help="split of --ood-dataset (first user turn of each conversation)")
    sft_revision: str = arg("", help="Hub revision (commit) of --sft-dataset (default: the Hub's current main)")
    prefs_revision: str = arg("", help="Hub revision of --prefs-dataset")
    prompts_revision: str = arg("", help="Hub revision of --prompts-dataset (default: --prefs-revision when "
                                         "the prompts come from --prefs-dataset)")
    ood_revision: str = arg("", help="Hub revision of --ood-dataset (default: --sft-revision when the "
                                     "prompts come from --sft-dataset)")
    tokenizer: str = arg("", help="model whose tokenizer is saved to tokenizer/ and counts token lengths")
    length_unit: str = arg("tokens", help="unit of the length limits", choices=["tokens", "chars"])
    max_prompt_length: int = arg(512, help="drop rows whose prompt is longer (0 = no limit)")
    max_response_length: int = arg(1024, help="drop pairs with a longer chosen or rejected reply (0 = no limit)")
    max_conversation_length: int = arg(2048, help="drop SFT conversations longer than this, chat template "
                                                  "included when counting tokens (0 = no limit)")
    n_sft: int = arg(0, help="SFT conversations (0 = every usable row)")
    n_prefs_train: int = arg(0, help="training preference pairs (0 = all)")
    n_prefs_eval: int = arg(0, help="held-out preference pairs (0 = all)")
    n_ppo_prompts: int = arg(0, help="PPO prompts (0 = all)")
    n_eval_id: int = arg(500, help="in-distribution evaluation prompts (0 = all)")
    n_eval_ood: int = arg(500, help="out-of-distribution evaluation prompts (0 = all)")

    def validate(self) -> None:
        if self.length_unit == "tokens" and not self.tokenizer and (
                self.max_prompt_length or self.max_response_length or self.max_conversation_length):
            raise ValueError("length_unit tokens needs --tokenizer (or use --length-unit chars)")
        for field in dataclasses.fields(self):
            if field.name.startswith(("n_", "max_")) and getattr(self, field.name) < 0:
                raise ValueError(f"{field.name} must be >= 0")


# --------------------------------------------------------------------- reading

class Malformed(Exception):
    """A row of the wrong shape; the caller adds where it is."""


class Rows:
    """Rows of one split from one or more files, with a label for each row's location."""

    def __init__(self, segments: list[tuple[Any, Callable[[int], str]]]):
        self.segments = segments

    def __len__(self) -> int:
        return sum(len(rows) for rows, _ in self.segments)

    def get(self, index: int) -> tuple[dict, str]:
        for rows, label in self.segments:
            if index < len(rows):
                return rows[index], label(index)
            index -= len(rows)
        raise IndexError(index)


def _read_jsonl(path: Path) -> tuple[list, Callable[[int], str]]:
    rows, lines = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise StageError(f"{path}:{number}: invalid JSON ({err.msg})") from None
        lines.append(number)
    return rows, lambda i: f"{path}:{lines[i]}"


def _read_file(path: Path) -> tuple[Any, Callable[[int], str]]:
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise StageError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(rows, list):
            raise StageError(f"{path}: expected a JSON list of rows")
        return rows, lambda i: f"{path}: row {i}"
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        from datasets import Dataset

        return Dataset(pq.read_table(path)), lambda i: f"{path}: row {i}"
    raise StageError(f"{path}: unsupported file type (use .jsonl, .json or .parquet)")


def offline_snapshot(source: str, revision: str = "") -> Path | None:
    """Offline (HF_HUB_OFFLINE=1), a Hub id's snapshot (at `revision`) in the HF cache, or None.

    `datasets` offline reads only its own processed cache, not the Hub cache that `huggingface-cli
    download --repo-type dataset` (or a login node's load_dataset) fills; that snapshot is the repo's
    own layout, which the directory branch of load_rows reads.
    """
    from huggingface_hub import constants, snapshot_download

    if not constants.HF_HUB_OFFLINE:
        return None
    try:
        return Path(snapshot_download(source, repo_type="dataset", revision=revision or None,
                                      local_files_only=True))
    except Exception:  # not in the cache: load_dataset below says so in its own words
        return None


def load_rows(source: str, split: str, revision: str = "") -> Rows:
    """One split of a Hub dataset (at `revision` when given) or of a local copy of it."""
    path = Path(source)
    if path.is_file():
        return Rows([_read_file(path)])
    if path.is_dir() and any((path / name).exists() for name in ("dataset_dict.json", "state.json")):
        from datasets import DatasetDict, load_from_disk

        try:
            dataset = load_from_disk(str(path))
        except Exception as err:  # an empty or damaged split: one line, not a pyarrow traceback
            raise StageError(f"{path}: cannot load dataset ({str(err).splitlines()[0]})") from None
        if isinstance(dataset, DatasetDict):
            if split not in dataset:
                raise StageError(f"{path}: no split {split!r} (has {sorted(dataset)})")
            dataset = dataset[split]
        return Rows([(dataset, lambda i: f"{path}[{split}]: row {i}")])
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json", ".parquet")
                       and (p.stem == split or p.stem.startswith(f"{split}-")))
        if not files:
            raise StageError(f"{path}: no {split}.jsonl, {split}.json, {split}.parquet or {split}-*.parquet file")
        return Rows([_read_file(p) for p in files])
    if source.startswith((".", "/")) or source.count("/") != 1:
        raise StageError(f"{source}: no such file or directory (nor a Hub dataset id)")
    snapshot = offline_snapshot(source, revision)
    if snapshot is not None:
        return load_rows(str(snapshot), split)
    from datasets import load_dataset

    try:
        dataset = load_dataset(source, split=split, revision=revision or None)
    except Exception as err:  # network, auth, unknown split or revision: all end the stage the same way
        at = f"@{revision}" if revision else ""
        raise StageError(f"{source}{at}[{split}]: cannot load from the Hub ({str(err).splitlines()[0]})") from None
    return Rows([(dataset, lambda i: f"{source}[{split}]: row {i}")])


# --------------------------------------------------------------------- row shapes

def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise Malformed(f"`{name}` must be a string, got {type(value).__name__}")
    return value.strip()


def _messages(value: Any, name: str) -> list[dict]:
    if not isinstance(value, list):
        raise Malformed(f"`{name}` must be a list of {{role, content}} messages, got {type(value).__name__}")
    turns = []
    for k, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise Malformed(f"`{name}[{k}]` must be a message with role one of {sorted(ROLES)}")
        turns.append({"role": message["role"], "content": _text(message.get("content"), f"{name}[{k}].content")})
    return turns


def _column(row: Any, name: str) -> Any:
    if not isinstance(row, dict):
        raise Malformed(f"expected an object, got {type(row).__name__}")
    if name not in row:
        raise Malformed(f"missing `{name}` (has {sorted(row)})")
    return row[name]


def conversation(row: dict) -> list[dict] | None:
    """UltraChat: the conversation up to its last assistant turn; None if unusable."""
    turns = _messages(_column(row, "messages"), "messages")
    while turns and turns[-1]["role"] != "assistant":
        turns.pop()
    if not any(t["role"] == "user" for t in turns) or any(not t["content"] for t in turns):
        return None
    return turns


def _reply(value: Any, name: str) -> str:
    """A chosen/rejected reply: a plain string, or the last assistant turn of a conversation."""
    if isinstance(value, str):
        return value.strip()
    turns = [t for t in _messages(value, name) if t["role"] == "assistant"]
    return turns[-1]["content"] if turns else ""


def _score(row: dict, name: str) -> float:
    value = row.get(name)
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Malformed(f"`{name}` must be a number, got {type(value).__name__}")
    return float(value)


def preference(row: dict) -> dict | None:
    """UltraFeedback-binarized: prompt and the final assistant replies; None if unusable."""
    pair = {"prompt": _text(_column(row, "prompt"), "prompt"),
            "chosen": _reply(_column(row, "chosen"), "chosen"),
            "rejected": _reply(_column(row, "rejected"), "rejected"),
            "score_chosen": _score(row, "score_chosen"), "score_rejected": _score(row, "score_rejected")}
    if not (pair["prompt"] and pair["chosen"] and pair["rejected"]) or pair["chosen"] == pair["rejected"]:
        return None
    return pair


def prompt(row: dict) -> dict | None:
    """`prompt`, or else the first user turn of `messages` (UltraChat's test split has both)."""
    if isinstance(row, dict) and "prompt" in row:
        text = _text(row["prompt"], "prompt")
    else:
        users = [t["content"] for t in _messages(_column(row, "messages"), "messages") if t["role"] == "user"]
        text = users[0] if users else ""
    return {"prompt": text} if text else None


# --------------------------------------------------------------------- selection

class Lengths:
    def __init__(self, config: HubDataConfig, tokenizer):
        self.config, self.tokenizer = config, tokenizer

    def measure(self, text: str) -> int:
        if self.config.length_unit == "chars":
            return len(text)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def conversation(self, turns: list[dict]) -> int:
        if self.config.length_unit == "chars":
            return sum(len(t["content"]) for t in turns)
        return self.measure(self.tokenizer.apply_chat_template(turns, tokenize=False))

    def fits(self, kind: str, row: dict) -> bool:
        c = self.config
        if kind == "sft":
            return not c.max_conversation_length or self.conversation(row["messages"]) <= c.max_conversation_length
        if c.max_prompt_length and self.measure(row["prompt"]) > c.max_prompt_length:
            return False
        if kind == "prefs" and c.max_response_length:
            return max(self.measure(row["chosen"]), self.measure(row["rejected"])) <= c.max_response_length
        return True


EXTRACT = {"sft": lambda row: (lambda t: t and {"messages": t})(conversation(row)),
           "prefs": preference, "prompt": prompt}


def select(rows: Rows, kind: str, n: int, seed: int, lengths: Lengths, exclude: set[str] = frozenset(),
           category: str | None = None, label: str = "split") -> tuple[list[dict], dict]:
    """Up to n usable rows in a seeded random order, and counts of what was dropped."""
    order = list(range(len(rows)))
    random.Random(f"{seed}:{kind}").shuffle(order)
    kept, dropped = [], {"unusable": 0, "too_long": 0, "seen_in_training": 0}
    for index in order:
        if n and len(kept) == n:
            break
        row, where = rows.get(index)
        try:
            item = EXTRACT[kind](row)
        except Malformed as err:
            raise StageError(f"{where}: {err}") from None
        if item is None:
            dropped["unusable"] += 1
        elif not lengths.fits(kind, item):
            dropped["too_long"] += 1
        elif kind == "prompt" and item["prompt"] in exclude:
            dropped["seen_in_training"] += 1
        else:
            kept.append({**item, "category": category} if category else item)
    if not kept:
        raise StageError(f"{label}: no usable rows (dropped: {dropped})")
    return kept, dropped


def _short_name(source: str) -> str:
    return Path(source.rstrip("/")).stem or source


def generate(config: HubDataConfig, tokenizer=None) -> tuple[dict[str, list[dict]], dict]:
    lengths = Lengths(config, tokenizer)
    prompts_source = config.prompts_dataset or config.prefs_dataset
    ood_source = config.ood_dataset or config.sft_dataset
    revision = {config.sft_dataset: config.sft_revision, config.prefs_dataset: config.prefs_revision}
    prompts_revision = config.prompts_revision or revision.get(prompts_source, "")
    ood_revision = config.ood_revision or revision.get(ood_source, "")
    splits, report = {}, {}

    def take(name, source, split, kind, n, rev="", **kwargs):
        splits[name], dropped = select(load_rows(source, split, rev), kind, n, config.seed, lengths,
                                       label=f"{source}[{split}]", **kwargs)
        report[name] = {"source": source, "split": split, "rows": len(splits[name]), "dropped": dropped,
                        **({"revision": rev} if rev else {})}

    take("sft", config.sft_dataset, config.sft_split, "sft", config.n_sft, config.sft_revision)
    take("prefs_train", config.prefs_dataset, config.prefs_train_split, "prefs", config.n_prefs_train,
         config.prefs_revision)
    take("prefs_eval", config.prefs_dataset, config.prefs_eval_split, "prefs", config.n_prefs_eval,
         config.prefs_revision)
    take("ppo_prompts", prompts_source, config.ppo_split, "prompt", config.n_ppo_prompts, prompts_revision)
    # held-out prompts never seen in any training split (the Hub splits are disjoint; local copies may not be)
    seen = ({next(t["content"] for t in r["messages"] if t["role"] == "user") for r in splits["sft"]}
            | {r["prompt"] for r in splits["prefs_train"] + splits["ppo_prompts"]})
    take("eval_id", prompts_source, config.eval_id_split, "prompt", config.n_eval_id, prompts_revision, exclude=seen,
         category=_short_name(prompts_source))
    take("eval_ood", ood_source, config.ood_split, "prompt", config.n_eval_ood, ood_revision, exclude=seen,
         category=_short_name(ood_source))
    splits["pretrain"] = splits["sft"]
    return splits, report


def main(argv: list[str] | None = None) -> None:
    from datasets import Dataset

    from salsa.modeling import load_tokenizer

    config = parse(HubDataConfig, argv)
    tokenizer = load_tokenizer(config.tokenizer) if config.tokenizer else None
    splits, report = generate(config, tokenizer)
    with artifacts.atomic_dir(config.out) as tmp:
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "tokenizer")
        for name, rows in splits.items():
            Dataset.from_list(rows).save_to_disk(str(tmp / name))
        artifacts.write_metadata(tmp, "prepare_data", config, config.seed,
                                 extra={"source": "hub", "sizes": {k: len(v) for k, v in splits.items()},
                                        "splits": report})
    print(f"prepare_data (hub): wrote {', '.join(f'{k}={len(v)}' for k, v in splits.items())} to {config.out}")


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
