"""The two stage CLIs and `salsa score`, end to end on tiny local models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from salsa import artifacts
from salsa.benchmarks import answer, judge


def run_stage(module, argv) -> int:
    return artifacts.run_main(module.main, [str(a) for a in argv] + ["--progress", "false"])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_flat_numeric(scores: dict):
    assert scores and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores.values()), scores


@pytest.fixture(scope="module")
def embedded_answers(tmp_path_factory, embedded_data, tiny_policy, tiny_sft):
    out = tmp_path_factory.mktemp("answers")
    for model, name in ((tiny_policy, "policy_mt"), (tiny_policy, "policy_arena"), (tiny_sft, "sft_arena")):
        benchmark = "embedded_mt" if name.endswith("_mt") else "embedded_arena"
        assert run_stage(answer, ["--model", model, "--benchmark", benchmark, "--data-dir", embedded_data,
                                  "--out", out / f"{name}.jsonl", "--seed", 0, "--max-new-tokens", 10]) == 0
    return out


def test_embedded_answers_format(embedded_answers):
    mt = read_jsonl(embedded_answers / "policy_mt.jsonl")
    assert len(mt) == 40 and mt[0]["model_id"] == "policy"
    assert isinstance(mt[0]["choices"][0]["turns"][0], str) and mt[0]["category"] in {"copy", "reverse", "sort"}
    arena = read_jsonl(embedded_answers / "sft_arena.jsonl")
    turn = arena[0]["choices"][0]["turns"][0]
    assert set(turn) == {"content", "token_len"} and arena[0]["model_id"] == "sft-1"
    assert (embedded_answers / "sft_arena.jsonl.meta.json").exists()


def test_answers_are_deterministic(embedded_answers, embedded_data, tiny_policy, tmp_path):
    assert run_stage(answer, ["--model", tiny_policy, "--benchmark", "embedded_arena", "--data-dir", embedded_data,
                              "--out", tmp_path / "again.jsonl", "--max-new-tokens", 10, "--temperature", 1.0,
                              "--seed", 3]) == 0
    assert run_stage(answer, ["--model", tiny_policy, "--benchmark", "embedded_arena", "--data-dir", embedded_data,
                              "--out", tmp_path / "again2.jsonl", "--max-new-tokens", 10, "--temperature", 1.0,
                              "--seed", 3]) == 0
    first, second = read_jsonl(tmp_path / "again.jsonl"), read_jsonl(tmp_path / "again2.jsonl")
    assert [r["choices"] for r in first] == [r["choices"] for r in second]


def test_gold_judge_mt_and_arena(embedded_answers, embedded_data, tmp_path):
    assert run_stage(judge, ["--answers", embedded_answers / "policy_mt.jsonl", "--benchmark", "embedded_mt",
                             "--judge", "gold", "--data-dir", embedded_data, "--out", tmp_path / "mt"]) == 0
    scores = json.loads((tmp_path / "mt" / "scores.json").read_text())
    assert_flat_numeric(scores)
    assert 1.0 <= scores["mtbench_score"] <= 10.0 and scores["judge_failures"] == 0
    assert "mtbench_turn2" not in scores and any(k.startswith("mtbench_cat_") for k in scores)
    records = read_jsonl(tmp_path / "mt" / "judgments.jsonl")
    assert len(records) == 40 and {"question_id", "model", "judge", "judgment", "score", "turn"} <= set(records[0])
    assert (tmp_path / "mt" / "salsa_meta.json").exists()

    assert run_stage(judge, ["--answers", embedded_answers / "policy_arena.jsonl", "--baseline-answers",
                             embedded_answers / "sft_arena.jsonl", "--benchmark", "embedded_arena", "--judge", "gold",
                             "--data-dir", embedded_data, "--out", tmp_path / "arena", "--seed", 1]) == 0
    scores = json.loads((tmp_path / "arena" / "scores.json").read_text())
    assert_flat_numeric(scores)
    assert scores["arena_ci_low"] <= scores["arena_winrate"] <= scores["arena_ci_high"]
    assert {"gold_winrate_hard", "gold_winrate_soft", "gold_winrate_hard_ci_low"} <= set(scores)
    for record in read_jsonl(tmp_path / "arena" / "judgments.jsonl"):
        game1, game2 = (g["score"] for g in record["games"])
        mirror = {"A>>B": "B>>A", "A>B": "B>A", "A=B": "A=B", "B>A": "A>B", "B>>A": "A>>B"}
        assert mirror[game1] == game2 and record["baseline"] == "sft-1"


def test_reward_judge(embedded_answers, embedded_data, tmp_path):
    from bench_helpers import save_tiny_llama

    reward_dir = save_tiny_llama(embedded_data / "tokenizer", tmp_path / "rm", seed=5, head="cls")
    (reward_dir / "reward_normalization.json").write_text(json.dumps({"mean": 0.0, "std": 0.01}))
    assert run_stage(judge, ["--answers", embedded_answers / "policy_arena.jsonl", "--baseline-answers",
                             embedded_answers / "sft_arena.jsonl", "--benchmark", "embedded_arena", "--judge",
                             "reward", "--judge-model", reward_dir, "--data-dir", embedded_data,
                             "--out", tmp_path / "out"]) == 0
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert_flat_numeric(scores)
    assert 0 <= scores["reward_winrate_hard"] <= 1 and 0 <= scores["reward_winrate_soft"] <= 1
    for record in read_jsonl(tmp_path / "out" / "judgments.jsonl"):
        d = record["model_score"] - record["baseline_score"]
        expected = "A=B" if abs(d) < 0.1 else ("B>>A" if d >= 1 else "B>A") if d > 0 else ("A>>B" if d <= -1 else "A>B")
        assert record["games"][0]["score"] == expected        # game 1: baseline is A


def test_mt_bench_answers_two_turns_and_local_judge_cache(shared_benchmarks, tiny_policy, tmp_path, capsys):
    answers = tmp_path / "mt.jsonl"
    assert run_stage(answer, ["--model", tiny_policy, "--benchmark", "mt_bench", "--data-dir", shared_benchmarks,
                              "--out", answers, "--max-questions", 2, "--max-new-tokens", 4]) == 0
    rows = read_jsonl(answers)
    assert len(rows) == 2 and all(len(r["choices"][0]["turns"]) == 2 for r in rows)
    argv = ["--answers", answers, "--benchmark", "mt_bench", "--judge", "local", "--judge-model", tiny_policy,
            "--data-dir", shared_benchmarks, "--judge-max-tokens", 4, "--cache-dir", tmp_path / "cache"]
    # a random tiny judge never gives a rating: by default that fails the stage instead of scoring nothing
    assert run_stage(judge, argv + ["--out", tmp_path / "j0"]) == 1
    assert "4 of 4 verdicts failed (4 unparseable" in capsys.readouterr().err and not (tmp_path / "j0").exists()
    argv += ["--max-failure-fraction", 1]
    assert run_stage(judge, argv + ["--out", tmp_path / "j1"]) == 0
    scores = json.loads((tmp_path / "j1" / "scores.json").read_text())
    assert scores["judge_parse_failures"] == 4 and "mtbench_score" not in scores   # all -1: no mean
    first = read_jsonl(tmp_path / "j1" / "judgments.jsonl")
    assert [r["judge"][1] for r in first] == ["single-v1", "single-v1-multi-turn"] * 2
    assert all(r["score"] == -1 for r in first)
    capsys.readouterr()
    assert run_stage(judge, argv + ["--out", tmp_path / "j2"]) == 0
    assert "4 from cache, 0 API calls" in capsys.readouterr().out
    assert [r["judgment"] for r in read_jsonl(tmp_path / "j2" / "judgments.jsonl")] == [r["judgment"] for r in first]


def test_arena_v2_answer_format(shared_benchmarks, tiny_policy, tmp_path):
    out = tmp_path / "v2.jsonl"
    assert run_stage(answer, ["--model", tiny_policy, "--benchmark", "arena_hard_v2.0", "--data-dir",
                              shared_benchmarks, "--out", out, "--max-questions", 2, "--max-new-tokens", 3]) == 0
    row = read_jsonl(out)[0]
    assert {"uid", "ans_id", "model", "messages", "tstamp", "metadata"} <= set(row)
    assert row["messages"][-1]["role"] == "assistant" and "answer" in row["messages"][-1]["content"]
    assert "token_len" in row["metadata"] and "header_count" in row["metadata"]


def test_stage_errors_are_one_line(embedded_answers, embedded_data, tmp_path, capsys):
    assert run_stage(judge, ["--answers", embedded_answers / "policy_mt.jsonl", "--benchmark", "mt_bench",
                             "--judge", "gold", "--data-dir", embedded_data, "--out", tmp_path / "x"]) == 1
    assert "gold judge only knows the embedded task" in capsys.readouterr().err
    assert run_stage(judge, ["--answers", embedded_answers / "policy_arena.jsonl", "--benchmark", "embedded_arena",
                             "--judge", "gold", "--data-dir", embedded_data, "--out", tmp_path / "x"]) == 1
    assert "--baseline-answers" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_salsa_score_cli(embedded_answers, embedded_data, tmp_path):
    assert run_stage(judge, ["--answers", embedded_answers / "policy_arena.jsonl", "--baseline-answers",
                             embedded_answers / "sft_arena.jsonl", "--benchmark", "embedded_arena", "--judge", "gold",
                             "--data-dir", embedded_data, "--out", tmp_path / "arena"]) == 0
    assert run_stage(judge, ["--answers", embedded_answers / "policy_mt.jsonl", "--benchmark", "embedded_mt",
                             "--judge", "gold", "--data-dir", embedded_data, "--out", tmp_path / "mt"]) == 0
    cli = [sys.executable, "-m", "salsa.cli", "score"]
    arena = subprocess.run(cli + ["arena-hard", "--judgments", tmp_path / "arena" / "judgments.jsonl"],
                           capture_output=True, text=True, timeout=120)
    assert arena.returncode == 0, arena.stderr
    assert "policy" in arena.stdout and "sft-1" in arena.stdout and "95% CI" in arena.stdout
    mt = subprocess.run(cli + ["mt-bench", "--judgments", tmp_path / "mt" / "judgments.jsonl"],
                        capture_output=True, text=True, timeout=120)
    assert mt.returncode == 0 and "turn1" in mt.stdout and "copy" in mt.stdout
    (tmp_path / "bad.jsonl").write_text('{"model": "m"}\n')
    bad = subprocess.run(cli + ["mt-bench", "--judgments", tmp_path / "bad.jsonl"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip() == f"error: {tmp_path / 'bad.jsonl'}:1: not a mt-bench " \
                                                          f"judgment (missing score)"
