"""Scoring against hand-computed cases: MT-Bench ratings, Arena-Hard verdicts and win rates, reward win rate."""

from __future__ import annotations

import math

import pytest

from salsa.benchmarks.arena_hard_scoring import (arena_v01_scores, arena_v2_scores, fit_bradley_terry,
                                                 legacy_battles, legacy_verdict, v2_question_scores, v2_verdict)
from salsa.benchmarks.mt_bench_scoring import mt_bench_metrics, mt_bench_table, parse_rating
from salsa.benchmarks.win_rate import reward_win_rate
from salsa.judges import gold_to_rating, reward_to_rating, verdict_from_difference

V2_PATTERNS = (r"\[\[([AB<>=]+)\]\]", r"\[([AB<>=]+)\]")


@pytest.mark.parametrize("reply, rating", [
    ("Clear and correct. Rating: [[8]]", 8.0),
    ("Rating: [[7.5]]", 7.5),
    ("Rating: [6]", 6.0),                          # the single-bracket fallback
    ("first [[3]] then [[9]]", 3.0),               # the first double-bracket match wins
    ("[2] but finally [[9]]", 9.0),                # double brackets beat the fallback
    ("I would give it an eight.", -1),
    ("Rating: [[eight]]", -1),
    ("", -1),
    (None, -1),
])
def test_mt_bench_rating_parse(reply, rating):
    assert parse_rating(reply) == rating


def _mt(qid, turn, score, category, model="m"):
    return {"question_id": qid, "model": model, "turn": turn, "score": score, "category": category}


def test_mt_bench_means_exclude_failures():
    records = [_mt(1, 1, 8, "writing"), _mt(1, 2, 6, "writing"), _mt(2, 1, 4, "math"), _mt(2, 2, -1, "math"),
               _mt(3, 1, -1, "math"), _mt(3, 2, 10, "math")]
    row = mt_bench_table(records)["m"]
    assert row["turn1"] == pytest.approx(6.0)           # (8 + 4) / 2
    assert row["turn2"] == pytest.approx(8.0)           # (6 + 10) / 2
    assert row["score"] == pytest.approx(7.0)           # mean of all four valid ratings
    assert row["categories"] == {"math": pytest.approx(7.0), "writing": pytest.approx(7.0)}
    assert (row["n_valid"], row["n_failed"]) == (4, 2)
    metrics = mt_bench_metrics(records)
    assert metrics["mtbench_score"] == pytest.approx(7.0)
    assert metrics["mtbench_turn2"] == pytest.approx(8.0)
    assert metrics["mtbench_cat_math"] == pytest.approx(7.0)
    assert "mtbench_turn2" not in mt_bench_metrics([_mt(1, 1, 5, "copy")])


@pytest.mark.parametrize("judgment, expected", [
    ("... My final verdict is [[A>B]].", ("A>B", False)),
    ("[[B>>A]] and again [[B>>A]]", ("B>>A", False)),
    ("no label at all", (None, True)),                # retry
    ("[[A>B]] ... on reflection [[B>A]]", (None, False)),   # contradictory: give up
    ("single bracket [A>B] is not legacy", (None, True)),
])
def test_legacy_verdict(judgment, expected):
    assert legacy_verdict(judgment) == expected


def test_v2_verdict_uses_upper_case_last_match_and_fallback():
    assert v2_verdict("first [[a>b]] then [[b>a]]", V2_PATTERNS) == "B>A"
    assert v2_verdict("only single [A=B]", V2_PATTERNS) == "A=B"
    assert v2_verdict("nothing", V2_PATTERNS) is None


def _game(label):
    return {"score": label, "judgment": "", "user_prompt": ""}


def test_legacy_battles_both_orders_strong_and_ties():
    # game 1: baseline is A -> "B>>A" is a strong model win; game 2: model is A -> "A=B" a tie.
    records = [{"model": "m", "games": [_game("B>>A"), _game("A=B")]},
               {"model": "m", "games": [_game("A>B"), _game("A>B")]},        # baseline wins game 1, model game 2
               {"model": "m", "games": [_game(None), _game("A<B")]}]         # unparsed / unknown: dropped
    assert legacy_battles(records) == [("m", 1.0)] * 3 + [("m", 0.5), ("m", 0.0), ("m", 1.0)]
    assert legacy_battles(records, first_game_only=True) == [("m", 1.0)] * 3 + [("m", 0.0)]


def test_bt_win_rate_sweep_and_symmetry():
    sweep = [{"model": "m", "games": [_game("B>A"), _game("A>B")]} for _ in range(20)]
    assert arena_v01_scores(sweep, "base", n_boot=10)["m"]["winrate"] > 99.9
    lost = [{"model": "m", "games": [_game("A>B"), _game("B>A")]} for _ in range(20)]
    assert arena_v01_scores(lost, "base", n_boot=10)["m"]["winrate"] < 0.1
    symmetric = [{"model": "m", "games": [_game("A>>B"), _game("A>>B")]} for _ in range(10)]
    row = arena_v01_scores(symmetric, "base", n_boot=20)["m"]
    assert row["winrate"] == pytest.approx(50.0, abs=1e-6)
    ties = [{"model": "m", "games": [_game("A=B"), _game("A=B")]} for _ in range(5)]
    assert arena_v01_scores(ties, "base", n_boot=0)["m"]["winrate"] == pytest.approx(50.0, abs=1e-6)


def test_bt_hand_checked_rate():
    # 3 model wins and 1 loss (no strong verdicts): the BT fit reproduces 3/4.
    records = [{"model": "m", "games": [_game("B>A"), _game("A>B")]},
               {"model": "m", "games": [_game("B>A"), _game("B>A")]}]
    table = arena_v01_scores(records, "base", n_boot=0)
    assert table["m"]["winrate"] == pytest.approx(75.0, abs=1e-4)
    assert table["base"]["winrate"] == 50.0
    # a strong win counts three times: 3 + 1 + 1 wins, 1 loss -> 5/6
    records[0]["games"][0] = _game("B>>A")
    assert arena_v01_scores(records, "base", n_boot=0)["m"]["winrate"] == pytest.approx(500 / 6, abs=1e-4)


def test_bt_fit_two_models_are_independent():
    import numpy as np
    theta = fit_bradley_terry(np.array([0.0, 3.0, 1.0]), np.array([0.0, 4.0, 4.0]), 3)
    assert 1 / (1 + math.exp(-theta[1])) == pytest.approx(0.75, abs=1e-6)
    assert 1 / (1 + math.exp(-theta[2])) == pytest.approx(0.25, abs=1e-6)


def test_bootstrap_ci_deterministic_under_seed():
    labels = ["B>A", "A>B", "A=B", "B>>A", "A>>B"]
    records = [{"model": "m", "games": [_game(labels[i % 5]), _game(labels[(i * 3) % 5])]} for i in range(40)]
    first, again = arena_v01_scores(records, "base", seed=7), arena_v01_scores(records, "base", seed=7)
    other = arena_v01_scores(records, "base", seed=8)
    assert first == again
    assert (first["m"]["ci_low"], first["m"]["ci_high"]) != (other["m"]["ci_low"], other["m"]["ci_high"])
    assert first["m"]["ci_low"] <= first["m"]["winrate"] <= first["m"]["ci_high"]


def test_v2_question_scores_and_mean():
    # game 1 (baseline A): "A<B" means the model won -> 1 - 0 = 1; game 2 (model A): "A>>B" -> three 1s
    assert v2_question_scores({"games": [_game("A<B"), _game("A>>B")]}) == [1.0, 1.0, 1.0, 1.0]
    assert v2_question_scores({"games": [_game("A=B"), _game("B>A")]}) == [0.0, 0.5]
    assert v2_question_scores({"games": [_game(None), _game("A>B")]}) is None       # dropped entirely
    assert v2_question_scores({"games": [None, _game("A>B")]}) is None
    records = [{"uid": "1", "model": "org/m", "category": "hard_prompt", "games": [_game("A=B"), _game("B>A")]},
               {"uid": "2", "model": "org/m", "category": "hard_prompt", "games": [_game("B>A"), _game("A>B")]},
               {"uid": "3", "model": "org/m", "category": "hard_prompt", "games": [_game("x"), _game("A>B")]}]
    row = arena_v2_scores(records, n_boot=200, seed=0)["m|hard_prompt"]
    assert (row["n_questions"], row["n_dropped"]) == (2, 1)
    assert row["winrate"] == pytest.approx(62.5, abs=6)     # plain mean of [0, .5, 1, 1] = 0.625
    assert row["ci_low"] <= row["winrate"] <= row["ci_high"]
    assert arena_v2_scores(records, seed=3) == arena_v2_scores(records, seed=3)


def test_reward_win_rate_hard_soft_and_ties():
    result = reward_win_rate([1.0, 0.0, 2.0, 0.5], [0.0, 0.0, 3.0, 0.5], n_boot=500, seed=0)
    assert result["hard"] == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    sig = lambda x: 1 / (1 + math.exp(-x))   # noqa: E731
    assert result["soft"] == pytest.approx((sig(1) + 0.5 + sig(-1) + 0.5) / 4)
    assert result["hard_ci_low"] <= result["hard"] <= result["hard_ci_high"]
    assert result == reward_win_rate([1.0, 0.0, 2.0, 0.5], [0.0, 0.0, 3.0, 0.5], n_boot=500, seed=0)
    assert reward_win_rate([1, 1], [1, 1], n_boot=50)["hard_ci_high"] == 0.5
    with pytest.raises(ValueError):
        reward_win_rate([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        reward_win_rate([], [])


def test_score_judge_mappings():
    assert verdict_from_difference(0.05, 0.1, 1.0) == "A=B"
    assert verdict_from_difference(0.5, 0.1, 1.0) == "A>B"
    assert verdict_from_difference(1.0, 0.1, 1.0) == "A>>B"
    assert verdict_from_difference(-0.5, 0.1, 1.0) == "B>A"
    assert verdict_from_difference(-2.0, 0.1, 1.0) == "B>>A"
    assert reward_to_rating(0.0) == pytest.approx(5.5)
    assert 1.0 < reward_to_rating(-30) < reward_to_rating(30) <= 10.0
    assert gold_to_rating(1.0) == 10.0 and gold_to_rating(-2.0) == 1.0 and gold_to_rating(0.5) == 5.5


# ---------------------------------------------------------------- `salsa score` on malformed judgments

def _score(tmp_path, kind, rows, *extra):
    from salsa import artifacts
    from salsa.benchmarks import show_scores as score

    path = tmp_path / "judgments.jsonl"
    path.write_text("".join((r if isinstance(r, str) else __import__("json").dumps(r)) + "\n" for r in rows))
    return artifacts.run_main(score.main, [kind, "--judgments", str(path), *map(str, extra)]), path


GOOD_MT = {"question_id": 1, "model": "m", "score": 7, "turn": 1}


@pytest.mark.parametrize("bad, message", [
    ({**GOOD_MT, "score": "ten"}, "field 'score' should be a number, got \"ten\""),
    ({**GOOD_MT, "score": None}, "field 'score' should be a number, got null"),
    ({**GOOD_MT, "turn": "x"}, "field 'turn' should be 1 or 2, got \"x\""),
    ({k: v for k, v in GOOD_MT.items() if k != "turn"}, "missing field 'turn' (1 or 2)"),
])
def test_score_mt_bench_bad_rows_name_file_and_line(tmp_path, capsys, bad, message):
    rc, path = _score(tmp_path, "mt-bench", [GOOD_MT, bad])
    assert rc == 1 and capsys.readouterr().err.strip() == f"error: {path}:2: {message}"


def test_score_mt_bench_out_of_range_ratings_fail_and_all_failed_is_an_error(tmp_path, capsys):
    rows = [GOOD_MT, {**GOOD_MT, "turn": 2, "score": 11}, {**GOOD_MT, "question_id": 2, "score": 0}]
    rc, _ = _score(tmp_path, "mt-bench", rows)
    out = capsys.readouterr().out
    assert rc == 0 and " 7.000 " in out and "    1      2" in out          # score 7 (not 6), 1 valid, 2 failed
    rc, path = _score(tmp_path, "mt-bench", [{**GOOD_MT, "score": -1}, {**GOOD_MT, "turn": 2, "score": 12}])
    assert rc == 1 and "no valid rating (1-10) for m; 2 failed" in capsys.readouterr().err


def _legacy(model, *labels, baseline="base"):
    return {"question_id": "q", "model": model, "baseline": baseline, "judge": "j",
            "games": [{"score": label, "judgment": "", "user_prompt": ""} for label in labels]}


@pytest.mark.parametrize("bad, message", [
    ({"question_id": "q", "model": "m", "games": "A>B"}, "'games' should be a non-empty list"),
    ({"question_id": "q", "model": "m", "games": ["A>B", "B>A"]}, "game 1 should be an object or null, got str"),
    ({"question_id": "q", "model": "m", "games": [{"score": 3}]}, "game 1: 'score' should be a verdict label"),
    (_legacy("base", "A>B", "B>A"), "model 'base' is the baseline"),
])
def test_score_arena_bad_rows_name_file_and_line(tmp_path, capsys, bad, message):
    rc, path = _score(tmp_path, "arena-hard", [_legacy("m", "B>A", "A>B"), bad])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith(f"error: {path}:2: {message}"), err


def test_score_arena_all_unparseable_is_an_error_and_drops_are_printed(tmp_path, capsys):
    rc, _ = _score(tmp_path, "arena-hard", [_legacy("m", None, "$ERROR$")] * 3)
    assert rc == 1 and "no valid battle for m" in capsys.readouterr().err
    rows = [_legacy("m", "B>A", None), _legacy("m", None, None), _legacy("m", "B>A", "A>B")]
    rc, _ = _score(tmp_path, "arena-hard", rows, "--n-boot", 0)
    assert rc == 0 and "dropped: 3 game(s) without a valid verdict, 1 question(s)" in capsys.readouterr().out
    v2 = [{"uid": "u", "model": "m", "category": "hard_prompt", "games": [{"score": None}, {"score": "A>B"}]}]
    rc, _ = _score(tmp_path, "arena-hard", v2)
    assert rc == 1 and "every question of m|hard_prompt was dropped" in capsys.readouterr().err


def test_score_directory_is_a_one_line_error(tmp_path, capsys):
    from salsa import artifacts
    from salsa.benchmarks import show_scores as score

    assert artifacts.run_main(score.main, ["mt-bench", "--judgments", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: is a directory; pass the judgments.jsonl file inside it"


def test_arena_metrics_report_dropped_games_and_questions():
    from salsa.benchmarks.scores_json import arena_metrics

    rows = [_legacy("m", "B>A", None), _legacy("m", None, None), _legacy("m", "B>A", "A>B")]
    metrics, table = arena_metrics(rows, "arena_hard_v0.1", n_boot=0)
    assert (metrics["arena_n_dropped_games"], metrics["arena_n_dropped"]) == (3, 1)
    assert "dropped: 3 game(s)" in table


def test_an_arena_model_without_a_valid_verdict_gets_no_win_rate():
    from salsa.benchmarks.scores_json import arena_metrics

    # every game unparseable (a small local judge): the Bradley-Terry fit would say 50%
    rows = [_legacy("m", None, None), _legacy("m", "no verdict", None)]
    metrics, table = arena_metrics(rows, "arena_hard_v0.1", n_boot=10)
    assert "arena_winrate" not in metrics and "arena_ci_low" not in metrics
    assert metrics["arena_n_battles"] == 0 and metrics["arena_n_dropped"] == 2
    assert [line.split() for line in table.splitlines() if line.startswith("m ")] == [["m", "-", "-", "-", "2"]]
    one_valid, _ = arena_metrics([*rows, _legacy("m", "B>A", None)], "arena_hard_v0.1", n_boot=0)
    assert one_valid["arena_winrate"] > 50.0  # one win is a win rate again
