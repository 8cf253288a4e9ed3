"""Loaders: the public benchmark files (../shared/benchmarks) and malformed inputs."""

from __future__ import annotations

import json

import pytest

from salsa.artifacts import StageError
from salsa.benchmarks.answer_formats import read_answers
from salsa.benchmarks.data import V2_BASELINES, load_arena_questions, load_benchmark, resolve_data_dir
from salsa.benchmarks.files import read_jsonl


def test_mt_bench_files(shared_benchmarks):
    data = load_benchmark("mt_bench", str(shared_benchmarks / "mt_bench"))
    assert len(data.questions) == 80
    assert all(len(q.turns) == 2 for q in data.questions)
    assert {q.category for q in data.questions} >= {"writing", "math", "coding", "reasoning"}
    assert len(data.judge_prompts) == 8
    assert {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"} <= set(data.judge_prompts)
    assert len(data.reference_answers) == 30
    assert all(len(turns) == 2 for turns in data.reference_answers.values())


def test_root_dir_resolves_to_benchmark_subdir(shared_benchmarks):
    assert resolve_data_dir("mt_bench", str(shared_benchmarks)) == shared_benchmarks / "mt_bench"


def test_arena_v01_files(shared_benchmarks):
    data = load_benchmark("arena_hard_v0.1", str(shared_benchmarks))
    assert len(data.questions) == 500
    assert len(data.baseline_answers) == 500
    assert data.baseline_name == "gpt-4-0314"
    assert {a.model_id for a in data.baseline_answers.values()} == {"gpt-4-0314"}
    settings = data.arena_settings
    assert settings.legacy and settings.attempts == 2 and settings.max_tokens == 4096
    assert "{question_1}" in settings.prompt_template and "{answer_2}" in settings.prompt_template
    assert settings.system_prompt("arena-hard-v0.1")


def test_arena_v2_files(shared_benchmarks):
    all_questions = load_arena_questions(shared_benchmarks / "arena_hard_v2.0" / "question.jsonl")
    assert len(all_questions) == 750
    data = load_benchmark("arena_hard_v2.0", str(shared_benchmarks))
    assert len(data.questions) == 500                    # hard_prompt only, upstream's default category
    assert {q.category for q in data.questions} == {"hard_prompt"}
    assert len(data.baseline_answers) == 750             # the o3-mini file answers every question
    assert data.baseline_name == V2_BASELINES["hard_prompt"]
    settings = data.arena_settings
    assert not settings.legacy and settings.attempts == 1 and len(settings.regex_patterns) == 2
    assert "{QUESTION}" in settings.prompt_template
    # v2.0's hard_prompt judge prompt is v0.1's (read from its judge_config.yaml)
    v01 = load_benchmark("arena_hard_v0.1", str(shared_benchmarks)).arena_settings
    assert settings.system_prompt("hard_prompt") == v01.system_prompt("x")
    with pytest.raises(StageError, match="creative_writing"):
        settings.system_prompt("creative_writing")


def test_embedded_loader(embedded_data):
    data = load_benchmark("embedded_mt", str(embedded_data))
    assert len(data.questions) == 40
    assert {q.category for q in data.questions} <= {"copy", "reverse", "sort"}
    assert data.task["extra_penalty"] == 1.0


def test_broken_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "question.jsonl"
    good = json.dumps({"question_id": 1, "category": "writing", "turns": ["a", "b"]})
    path.write_text(good + "\n\n" + good.replace("1", "2") + "\n{not json\n")
    with pytest.raises(StageError, match=rf"{path}:4: invalid JSON"):
        read_jsonl(path)
    with pytest.raises(StageError, match=rf"{path}:4: invalid JSON"):
        load_benchmark("mt_bench", str(tmp_path))


@pytest.mark.parametrize("row, message", [
    ({"question_id": 1, "category": "writing"}, "missing field 'turns'"),
    ({"question_id": 1, "category": "writing", "turns": "text"}, "field 'turns' should be list"),
    ({"question_id": 1, "category": "writing", "turns": []}, "no turns"),
    ([1, 2], "expected a JSON object"),
])
def test_malformed_question_fields(tmp_path, row, message):
    path = tmp_path / "question.jsonl"
    path.write_text(json.dumps({"question_id": 0, "category": "x", "turns": ["ok"]}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(StageError, match=rf"{path}:2: .*{message}"):
        load_benchmark("mt_bench", str(tmp_path))


def test_missing_files(tmp_path):
    with pytest.raises(StageError, match="question.jsonl: file not found"):
        load_benchmark("mt_bench", str(tmp_path))
    with pytest.raises(StageError, match="data directory not found"):
        load_benchmark("mt_bench", str(tmp_path / "nowhere"))
    with pytest.raises(StageError, match="eval_id"):
        load_benchmark("embedded_arena", str(tmp_path))


def test_bad_yaml_names_file_and_line(tmp_path):
    (tmp_path / "question.jsonl").write_text(json.dumps({"question_id": "q", "turns": [{"content": "hi"}]}) + "\n")
    (tmp_path / "judge_config.yaml").write_text("system_prompt: ok\nprompt_template: [unclosed\n")
    with pytest.raises(StageError, match=r"judge_config.yaml:\d+: invalid YAML"):
        load_benchmark("arena_hard_v0.1", str(tmp_path))


def test_bad_answer_record(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps({"question_id": 1, "choices": []}) + "\n")
    with pytest.raises(StageError, match=rf"{path}:1: not an answer record"):
        read_answers(path)


def test_hub_offline_is_a_clean_stage_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(StageError, match="hub dataset someone/not-cached"):
        load_benchmark("mt_bench", None, hub_dataset="someone/not-cached", hub_subdir="data/mt_bench")


def test_benchmark_modules_import_without_a_cycle():
    """The package's import graph (module-level and in-function imports alike) has no cycle."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "src" / "salsa" / "benchmarks"
    graph = {}
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        graph[path.stem] = {node.module.rsplit(".", 1)[1] for node in ast.walk(tree)
                            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("salsa.benchmarks.")}
    state = {}

    def visit(module, trail):
        if state.get(module) == "open":
            raise AssertionError(" -> ".join([*trail, module]))
        if state.get(module) != "done":
            state[module] = "open"
            for imported in graph.get(module, ()):
                visit(imported, [*trail, module])
            state[module] = "done"

    for module in graph:
        visit(module, [])
