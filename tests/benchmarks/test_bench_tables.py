"""The summary keeps one column per benchmark: real and embedded runs never overwrite each other."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from salsa import tables


def _write(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


@pytest.fixture
def results(tmp_path):
    for model in ("sft/seed1", "ppo/salsa/seed1"):
        _write(tmp_path / "eval" / model / "metrics.json", {"gold_id": 0.5})
        (tmp_path / "eval" / model / "samples.jsonl").write_text(
            json.dumps({"split": "id", "prompt": "p", "proxy": 0.1}) + "\n")
    judged = {  # benchmark -> (scores of sft/seed1, scores of ppo/salsa/seed1)
        "mt_bench": ({"mtbench_score": 6.25, "judge_failures": 1}, {"mtbench_score": 7.5, "judge_failures": 0}),
        "embedded_mt": ({"mtbench_score": 3.0, "judge_failures": 0}, {"mtbench_score": 9.0, "judge_failures": 0}),
        "arena_hard_v0.1": ({"arena_winrate": 12.0, "judge_failures": 4}, {"arena_winrate": 20.0, "judge_failures": 2}),
        "embedded_arena": ({"arena_winrate": 50.0, "judge_failures": 0}, {"arena_winrate": 80.0, "judge_failures": 0}),
    }
    for benchmark, per_model in judged.items():
        for model, scores in zip(("sft/seed1", "ppo/salsa/seed1"), per_model):
            _write(tmp_path / "bench" / benchmark / model / "judged" / "scores.json", scores)
    return tmp_path


def test_real_and_embedded_benchmarks_keep_their_own_columns(results, tmp_path):
    config = tables.TablesConfig(results=str(results), models=["sft/seed1", "ppo/salsa/seed1"],
                                 out=str(tmp_path / "tables"), baseline="sft/seed1")
    frame = tables.collect_rows(config).set_index("model")
    assert frame.loc["ppo/salsa/seed1", "mt_bench_score"] == 7.5
    assert frame.loc["ppo/salsa/seed1", "embedded_mt_score"] == 9.0
    assert frame.loc["sft/seed1", "arena_hard_v0.1_winrate"] == 12.0
    assert frame.loc["sft/seed1", "embedded_arena_winrate"] == 50.0
    assert "mtbench_score" not in frame.columns and "arena_winrate" not in frame.columns
    assert frame.loc["sft/seed1", "judge_failures"] == 5 and frame.loc["ppo/salsa/seed1", "judge_failures"] == 2
    assert frame.loc["sft/seed1", "arena_hard_v0.1_judge_failures"] == 4
    frame = frame.reset_index()
    markdown = tables.render_markdown(frame, tables.aggregate(frame), pd.DataFrame(), pd.DataFrame(), config)
    header = next(line for line in markdown.splitlines() if line.startswith("| model |"))
    for column in ("mt_bench_score", "arena_hard_v0.1_winrate", "embedded_mt_score", "embedded_arena_winrate",
                   "judge_failures"):
        assert f" {column} " in header, column
