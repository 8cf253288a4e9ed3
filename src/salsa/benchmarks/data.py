"""Benchmark data in the upstream layouts, from a local directory or the Hugging Face Hub.

Layouts read (as upstream keeps them; `salsa fetch-benchmarks` writes them, see salsa.benchmarks.fetch):

  mt_bench/          question.jsonl, judge_prompts.jsonl (here or one level up, as in
                     FastChat), reference_answer/gpt-4.jsonl
  arena_hard_v0.1/   question.jsonl (question_id/turns), model_answer/gpt-4-0314.jsonl,
                     judge_config.yaml (legacy judge settings, incl. the system prompt)
  arena_hard_v2.0/   question.jsonl (uid/prompt/category), model_answer/<baseline>.jsonl,
                     arena-hard-v2.0.yaml; the judge system prompt is not a data file
                     upstream, so it is read from a v0.1 judge_config.yaml (byte-identical)
  embedded data dir  eval_id/ (datasets.save_to_disk: prompt, category) and task.json

Every malformed input raises StageError naming the file and line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from salsa.artifacts import StageError
from salsa.benchmarks import ARENA_V01, ARENA_V2, EMBEDDED, MT_BENCH
from salsa.benchmarks.answer_formats import Answer, read_answers
from salsa.benchmarks.files import field, read_jsonl, read_yaml

# Baselines of the v2.0 categories (upstream keeps these in code, utils/judge_utils.py).
V2_BASELINES = {"hard_prompt": "o3-mini-2025-01-31", "coding": "o3-mini-2025-01-31",
                "math": "o3-mini-2025-01-31", "creative_writing": "gemini-2.0-flash-001"}
V2_DEFAULT_CATEGORIES = ("hard_prompt",)   # upstream show_result.py scores this one by default
V01_BASELINE = "gpt-4-0314"
# Questions whose MT-Bench judge prompt includes the reference answer (FastChat NEED_REF_CATS).
NEED_REF_CATEGORIES = ("math", "reasoning", "coding", "arena-hard-200")
_SUBDIRS = {MT_BENCH: "mt_bench", ARENA_V01: "arena_hard_v0.1", ARENA_V2: "arena_hard_v2.0"}


@dataclasses.dataclass(frozen=True)
class Question:
    question_id: Any            # int for MT-Bench, hex str for Arena-Hard, row index for embedded
    category: str
    turns: tuple[str, ...]
    subcategory: str | None = None
    required_temperature: float | None = None   # MT-Bench questions may fix their own temperature


@dataclasses.dataclass(frozen=True)
class ArenaJudgeSettings:
    """How a pairwise judge is prompted and parsed (one of upstream's two generations)."""

    legacy: bool                          # v0.1: {question_1}/{answer_1}/{answer_2} + follow-up retries
    prompt_template: str
    system_prompts: dict[str, str]        # by question category; "*" = any category
    regex_patterns: tuple[str, ...]
    temperature: float
    max_tokens: int
    attempts: int                         # judge calls per game (legacy: retry while no verdict)

    def system_prompt(self, category: str) -> str:
        prompt = self.system_prompts.get(category, self.system_prompts.get("*"))
        if prompt is None:
            raise StageError(f"no judge system prompt for category {category!r}; "
                             f"pass one with --creative-system-prompt-file (v2.0 creative_writing)")
        return prompt


@dataclasses.dataclass
class BenchmarkData:
    name: str
    questions: list[Question]
    judge_prompts: dict[str, dict] = dataclasses.field(default_factory=dict)   # MT-Bench, by name
    reference_answers: dict[Any, list[str]] = dataclasses.field(default_factory=dict)
    arena_settings: ArenaJudgeSettings | None = None
    baseline_answers: dict[Any, Answer] = dataclasses.field(default_factory=dict)
    baseline_name: str | None = None
    task: dict | None = None              # embedded: task.json


def _text_turn(turn: Any, where: str) -> str:
    """A question turn: a string (FastChat) or {"content": str} (Arena-Hard legacy)."""
    if isinstance(turn, dict):
        turn = turn.get("content")
    if not isinstance(turn, str):
        raise StageError(f"{where}: a turn should be a string or {{'content': str}}")
    return turn


# ---------------------------------------------------------------- where the data is

def fetch_from_hub(repo_id: str, revision: str | None, subdir: str | None) -> Path:
    """Download (or reuse the cached copy of) a dataset repo laid out like upstream."""
    from huggingface_hub import snapshot_download

    patterns = [f"{subdir.strip('/')}/**"] if subdir else None
    try:
        root = snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=patterns)
    except Exception as err:  # offline, missing repo, auth: all one clear line for the user
        raise StageError(f"hub dataset {repo_id}@{revision or 'main'}: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from None
    return Path(root) / subdir if subdir else Path(root)


def resolve_data_dir(benchmark: str, data_dir: str | None, hub_dataset: str | None = None,
                     hub_revision: str | None = None, hub_subdir: str | None = None) -> Path:
    """The benchmark's directory: the Hub copy when a dataset id is set, else data_dir.

    data_dir may be the benchmark's own directory or a root holding it under its usual
    name (a root with mt_bench/, arena_hard_v0.1/, ... inside).
    """
    if hub_dataset:
        root = fetch_from_hub(hub_dataset, hub_revision, hub_subdir)
    elif data_dir:
        root = Path(data_dir)
    else:
        raise StageError(f"{benchmark}: set --data-dir (or --hub-dataset)")
    if not root.is_dir():
        raise StageError(f"{root}: data directory not found")
    nested = root / _SUBDIRS.get(benchmark, "")
    if benchmark in _SUBDIRS and not (root / "question.jsonl").exists() and (nested / "question.jsonl").exists():
        root = nested
    from salsa.benchmarks.fetch import verify_checksums
    verify_checksums(root)      # a fetched copy (salsa fetch-benchmarks) is read only as fetched
    return root


# ---------------------------------------------------------------- MT-Bench

def load_mt_questions(path: Path) -> list[Question]:
    questions = []
    for lineno, row in read_jsonl(path):
        where = f"{path}:{lineno}"
        turns = field(row, "turns", list, where)
        if not turns:
            raise StageError(f"{where}: question has no turns")
        required = row.get("required_temperature")
        questions.append(Question(field(row, "question_id", (int, str), where), field(row, "category", str, where),
                                  tuple(_text_turn(t, where) for t in turns),
                                  required_temperature=float(required) if required is not None else None))
    return questions


def load_judge_prompts(path: Path) -> dict[str, dict]:
    prompts = {}
    for lineno, row in read_jsonl(path):
        where = f"{path}:{lineno}"
        for key in ("name", "system_prompt", "prompt_template", "output_format"):
            field(row, key, str, where)
        prompts[row["name"]] = row
    return prompts


def load_reference_answers(path: Path) -> dict[Any, list[str]]:
    return {answer.question_id: list(answer.turns) for answer in read_answers(path).values()}


def load_mt_bench(root: Path, judge_prompts_file: str | None = None) -> BenchmarkData:
    prompts_path = Path(judge_prompts_file) if judge_prompts_file else root / "judge_prompts.jsonl"
    if not judge_prompts_file and not prompts_path.exists() and (root.parent / "judge_prompts.jsonl").exists():
        prompts_path = root.parent / "judge_prompts.jsonl"      # FastChat keeps it in data/
    references = root / "reference_answer" / "gpt-4.jsonl"
    return BenchmarkData(
        name=MT_BENCH,
        questions=load_mt_questions(root / "question.jsonl"),
        judge_prompts=load_judge_prompts(prompts_path) if prompts_path.exists() else {},
        reference_answers=load_reference_answers(references) if references.exists() else {},
    )


# ---------------------------------------------------------------- Arena-Hard

def legacy_arena_settings(path: Path) -> ArenaJudgeSettings:
    """v0.1 judge_config.yaml: one regex, follow-up attempts while no verdict is found."""
    config = read_yaml(path)
    template = config.get("prompt_template")
    if isinstance(template, list) and len(template) == 1:
        template = template[0]
    for key, value in (("system_prompt", config.get("system_prompt")), ("prompt_template", template),
                       ("regex_pattern", config.get("regex_pattern"))):
        if not isinstance(value, str):
            raise StageError(f"{path}: field {key!r} missing or not a string")
    return ArenaJudgeSettings(
        legacy=True, prompt_template=template, system_prompts={"*": config["system_prompt"]},
        regex_patterns=(config["regex_pattern"],), temperature=float(config.get("temperature", 0.0)),
        max_tokens=int(config.get("max_tokens", 4096)),
        attempts=int(config.get("number_of_judgment_attempts", 2)))


def v2_arena_settings(path: Path, legacy_config: Path, creative_prompt_file: str | None) -> ArenaJudgeSettings:
    """v2.0 yaml (template, regexes, sampling) + system prompts by category."""
    config = read_yaml(path)
    template, patterns = config.get("prompt_template"), config.get("regex_patterns")
    if not isinstance(template, str):
        raise StageError(f"{path}: field 'prompt_template' missing or not a string")
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise StageError(f"{path}: field 'regex_patterns' should be a list of strings")
    # hard_prompt/coding/math use the original Arena-Hard prompt (same bytes as v0.1's).
    prompts = {"*": legacy_arena_settings(legacy_config).system_prompts["*"]}
    if creative_prompt_file:
        try:
            prompts["creative_writing"] = Path(creative_prompt_file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise StageError(f"{creative_prompt_file}: file not found") from None
    else:
        prompts["creative_writing"] = None  # type: ignore[assignment]  # refused in system_prompt()
    return ArenaJudgeSettings(
        legacy=False, prompt_template=template, system_prompts=prompts, regex_patterns=tuple(patterns),
        temperature=float(config.get("temperature", 0.0)), max_tokens=int(config.get("max_tokens", 16000)),
        attempts=1)


def load_arena_questions(path: Path) -> list[Question]:
    questions = []
    for lineno, row in read_jsonl(path):
        where = f"{path}:{lineno}"
        if "uid" in row:   # v2.0 schema (also v0.1 at upstream HEAD)
            questions.append(Question(field(row, "uid", str, where), row.get("category", "hard_prompt"),
                                      (field(row, "prompt", str, where),), row.get("subcategory")))
        else:
            turns = field(row, "turns", list, where)
            if not turns:
                raise StageError(f"{where}: question has no turns")
            questions.append(Question(field(row, "question_id", (str, int), where),
                                      row.get("category", "arena-hard-v0.1"),
                                      tuple(_text_turn(t, where) for t in turns), row.get("cluster")))
    return questions


def _legacy_config_path(root: Path, override: str | None) -> Path:
    if override:
        return Path(override)
    for candidate in (root / "judge_config.yaml", root.parent / "arena_hard_v0.1" / "judge_config.yaml",
                      root.parent / "config" / "judge_config.yaml"):
        if candidate.exists():
            return candidate
    return root / "judge_config.yaml"


def load_arena(name: str, root: Path, categories: tuple[str, ...] = (), judge_config: str | None = None,
               creative_prompt_file: str | None = None, need_judge_settings: bool = True) -> BenchmarkData:
    questions = load_arena_questions(root / "question.jsonl")
    if name == ARENA_V2:
        wanted = set(categories or V2_DEFAULT_CATEGORIES)
        questions = [q for q in questions if q.category in wanted]
        baselines = sorted({V2_BASELINES.get(q.category, V2_BASELINES["hard_prompt"]) for q in questions})
        # judge_config (a v0.1-style judge_config.yaml) only supplies the system prompt here.
        settings = (v2_arena_settings(root / "arena-hard-v2.0.yaml", _legacy_config_path(root, judge_config),
                                      creative_prompt_file) if need_judge_settings else None)
    else:
        baselines = [V01_BASELINE]
        settings = legacy_arena_settings(_legacy_config_path(root, judge_config)) if need_judge_settings else None
    return BenchmarkData(name=name, questions=questions, arena_settings=settings,
                         baseline_name="/".join(baselines),
                         baseline_answers=_baseline_answers(root, baselines))


def _baseline_answers(root: Path, baselines: list[str]) -> dict[Any, Answer]:
    answers: dict[Any, Answer] = {}
    for baseline in baselines:
        path = root / "model_answer" / f"{baseline}.jsonl"
        if path.exists():
            answers.update(read_answers(path))
    return answers


# ---------------------------------------------------------------- embedded task

def load_embedded(name: str, root: Path, split: str = "eval_id") -> BenchmarkData:
    """The embedded task's held-out prompts; category = the list operation."""
    from datasets import load_from_disk

    split_dir, task_file = root / split, root / "task.json"
    if not split_dir.is_dir():
        raise StageError(f"{split_dir}: not found (expected the prepared data dir with {split}/)")
    try:
        rows = load_from_disk(str(split_dir))
    except Exception as err:
        raise StageError(f"{split_dir}: not a saved dataset ({type(err).__name__}: {err})") from None
    for column in ("prompt", "category"):
        if column not in rows.column_names:
            raise StageError(f"{split_dir}: missing column {column!r}")
    try:
        task = json.loads(task_file.read_text())
    except FileNotFoundError:
        raise StageError(f"{task_file}: file not found") from None
    except json.JSONDecodeError as err:
        raise StageError(f"{task_file}:{err.lineno}: invalid JSON ({err.msg})") from None
    questions = [Question(i, row["category"], (row["prompt"],)) for i, row in enumerate(rows)]
    return BenchmarkData(name=name, questions=questions, task=task)


# ---------------------------------------------------------------- one entry point

def load_benchmark(name: str, data_dir: str | None, *, hub_dataset: str | None = None,
                   hub_revision: str | None = None, hub_subdir: str | None = None,
                   categories: tuple[str, ...] = (), judge_config: str | None = None,
                   judge_prompts: str | None = None, creative_prompt_file: str | None = None,
                   need_judge_settings: bool = True) -> BenchmarkData:
    root = resolve_data_dir(name, data_dir, hub_dataset, hub_revision, hub_subdir)
    if name == MT_BENCH:
        return load_mt_bench(root, judge_prompts)
    if name in (ARENA_V01, ARENA_V2):
        return load_arena(name, root, categories, judge_config, creative_prompt_file, need_judge_settings)
    if name in EMBEDDED:
        data = load_embedded(name, root)
        if judge_prompts:
            data.judge_prompts = load_judge_prompts(Path(judge_prompts))
        if judge_config:
            data.arena_settings = legacy_arena_settings(Path(judge_config))
        return data
    raise StageError(f"unknown benchmark {name!r}")
