"""The OpenAI-compatible judge against a loopback HTTP server: retries, failures, the cache."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("openai", reason="the openai client is the judge extra: pip install -e '.[judge]'")

from bench_helpers import chat_reply  # noqa: E402
from salsa.artifacts import StageError
from salsa.benchmarks.answer_formats import Answer
from salsa.benchmarks.data import ArenaJudgeSettings, BenchmarkData, Question
from salsa.benchmarks.judge_protocols import CONTINUE_MESSAGE, judge_arena
from salsa.judges import ChatRequest, JudgeAPIError, build_judge

ASK = [{"role": "system", "content": "You judge."}, {"role": "user", "content": "Which is better?"}]


def make_judge(server, tmp_path, **overrides):
    options = dict(model="judge-x", base_url=server.base_url, api_key_env="SALSA_TEST_KEY_UNSET",
                   concurrency=2, max_retries=2, backoff_initial=0.01, backoff_max=0.05,
                   request_timeout=5.0, cache_dir=tmp_path / "cache")
    options.update(overrides)
    return build_judge("openai", **options)


def test_429_then_success_retries_with_backoff(fake_server, tmp_path):
    server = fake_server(lambda n, req: (429, {"error": {"message": "slow down"}}, 0, {"retry-after": "0"})
                         if n == 1 else (200, chat_reply("[[A>B]]"), 0, None))
    judge = make_judge(server, tmp_path)
    assert judge.complete(ASK) == "[[A>B]]"
    assert len(server.requests) == 2
    assert judge.stats.counts["retries"] == 1 and judge.stats.counts["api_errors"] == 0
    assert server.requests[0]["messages"] == ASK and server.requests[0]["temperature"] == 0.0


def test_500_gives_up_after_retries_and_is_not_cached(fake_server, tmp_path):
    server = fake_server(lambda n, req: (500, {"error": {"message": "boom"}}, 0, None))
    judge = make_judge(server, tmp_path)
    [result] = judge.complete_batch([ChatRequest.of(ASK)], progress=False)
    assert not result.ok and "HTTP 500" in result.error
    assert len(server.requests) == 3                       # 1 try + 2 retries
    assert judge.stats.counts["api_errors"] == 1
    with pytest.raises(JudgeAPIError):
        judge.complete(ASK)
    assert len(server.requests) == 6                       # errors are retried on a rerun, not cached


def test_timeout_is_retried_then_reported(fake_server, tmp_path):
    server = fake_server(lambda n, req: (200, chat_reply("late"), 1.0, None))
    judge = make_judge(server, tmp_path, request_timeout=0.2, max_retries=1)
    [result] = judge.complete_batch([ChatRequest.of(ASK)], progress=False)
    assert not result.ok and "timeout" in result.error
    assert len(server.requests) == 2


def test_400_fails_without_retry(fake_server, tmp_path):
    server = fake_server(lambda n, req: (400, {"error": {"message": "bad request"}}, 0, None))
    [result] = make_judge(server, tmp_path).complete_batch([ChatRequest.of(ASK)], progress=False)
    assert "HTTP 400" in result.error and len(server.requests) == 1


def test_missing_key_for_the_real_api_is_a_stage_error(monkeypatch):
    monkeypatch.delenv("SALSA_TEST_KEY_UNSET", raising=False)
    with pytest.raises(StageError, match=r"\$SALSA_TEST_KEY_UNSET"):
        build_judge("openai", model="gpt-4", api_key_env="SALSA_TEST_KEY_UNSET")


def test_key_is_sent_but_never_cached(fake_server, tmp_path, monkeypatch):
    monkeypatch.setenv("SALSA_TEST_KEY", "sk-secret-123")
    server = fake_server(lambda n, req: (200, chat_reply("[[5]]"), 0, None))
    judge = make_judge(server, tmp_path, api_key_env="SALSA_TEST_KEY")
    assert judge.complete(ASK) == "[[5]]"
    assert server.headers[0]["authorization"] == "Bearer sk-secret-123"
    cached = [p.read_text() for p in (tmp_path / "cache").glob("*/*.json")]
    assert len(cached) == 1 and "sk-secret-123" not in cached[0]
    assert json.loads(cached[0])["text"] == "[[5]]"
    assert make_judge(server, tmp_path, api_key_env="SALSA_TEST_KEY").complete(ASK) == "[[5]]"
    assert len(server.requests) == 1                       # the second judge read the cache


def _arena_fixture():
    questions = [Question(f"q{i}", "hard_prompt", (f"question {i}",)) for i in range(3)]
    settings = ArenaJudgeSettings(legacy=True, prompt_template="Q: {question_1}\nA: {answer_1}\nB: {answer_2}",
                                  system_prompts={"*": "Judge fairly."}, regex_patterns=(r"\[\[([AB<>=]+)\]\]",),
                                  temperature=0.0, max_tokens=64, attempts=2)
    data = BenchmarkData("arena_hard_v0.1", questions, arena_settings=settings)
    answers = {q.question_id: Answer(q.question_id, "model", (f"model answer {q.question_id}",)) for q in questions}
    baselines = {q.question_id: Answer(q.question_id, "base", (f"baseline answer {q.question_id}",))
                 for q in questions}
    return data, answers, baselines


def test_no_verdict_replies_are_retried_then_recorded_as_parse_failures(fake_server, tmp_path):
    server = fake_server(lambda n, req: (200, chat_reply("I cannot decide."), 0, None))
    judge = make_judge(server, tmp_path)
    data, answers, baselines = _arena_fixture()
    result = judge_arena(data, answers, baselines, judge, progress=False)
    assert len(server.requests) == 3 * 2 * 2             # questions x games x attempts
    assert result.parse_failures == 6 and result.api_errors == 0
    record = result.records[0]
    assert [g["score"] for g in record["games"]] == [None, None]
    assert record["games"][0]["user_prompt"].startswith("Q: question 0\nA: baseline answer")   # game 1: baseline is A
    assert record["games"][1]["user_prompt"].startswith("Q: question 0\nA: model answer")
    follow_up = [r for r in server.requests if len(r["messages"]) == 4]
    assert len(follow_up) == 6 and follow_up[0]["messages"][-1]["content"] == CONTINUE_MESSAGE
    # a rerun is answered from the cache: no HTTP at all
    before = len(server.requests)
    again = judge_arena(data, answers, baselines, make_judge(server, tmp_path), progress=False)
    assert len(server.requests) == before
    assert [r["games"] for r in again.records] == [r["games"] for r in result.records]


def test_second_attempt_verdict_is_used(fake_server, tmp_path):
    server = fake_server(lambda n, req: (200, chat_reply("thinking" if len(req["messages"]) == 2
                                                          else "so: [[B>A]]"), 0, None))
    data, answers, baselines = _arena_fixture()
    result = judge_arena(data, answers, baselines, make_judge(server, tmp_path), progress=False)
    assert result.parse_failures == 0
    assert all(g["score"] == "B>A" for r in result.records for g in r["games"])
    assert result.records[0]["games"][0]["judgment"] == "\nthinking\nso: [[B>A]]"


def test_api_error_in_a_game_is_counted(fake_server, tmp_path):
    server = fake_server(lambda n, req: (503, {"error": {"message": "down"}}, 0, None))
    data, answers, baselines = _arena_fixture()
    result = judge_arena(data, answers, baselines, make_judge(server, tmp_path, max_retries=0), progress=False)
    assert result.api_errors == 6 and result.parse_failures == 0
    assert all("HTTP 503" in g["error"] for r in result.records for g in r["games"])
    assert os.environ.get("SALSA_TEST_KEY_UNSET") is None


# ---------------------------------------------------------------- the real upstream templates, end to end

def _judge_stage(argv):
    from salsa import artifacts
    from salsa.benchmarks import judge as judge_stage
    return artifacts.run_main(judge_stage.main, [str(a) for a in argv] + ["--progress", "false"])


def test_mt_bench_math_prompts_with_reference(fake_server, shared_benchmarks, tmp_path):
    server = fake_server(lambda n, req: (200, chat_reply("Solid. Rating: [[7]]"), 0, None))
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": q, "model_id": "m", "choices": [
        {"index": 0, "turns": ["one", "two"]}]}) + "\n" for q in (81, 111)))
    assert _judge_stage(["--answers", answers, "--benchmark", "mt_bench", "--judge", "openai", "--judge-model", "j",
                         "--base-url", server.base_url, "--data-dir", shared_benchmarks, "--out", tmp_path / "out",
                         "--cache-dir", tmp_path / "cache"]) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "judgments.jsonl").read_text().splitlines()]
    assert [(r["question_id"], r["turn"], r["judge"][1]) for r in records] == [
        (81, 1, "single-v1"), (81, 2, "single-v1-multi-turn"),
        (111, 1, "single-math-v1"), (111, 2, "single-math-v1-multi-turn")]
    references = [json.loads(line) for line in
                  (shared_benchmarks / "mt_bench" / "reference_answer" / "gpt-4.jsonl").read_text().splitlines()]
    [reference] = [r for r in references if r["question_id"] == 111]
    assert reference["choices"][0]["turns"][1] in records[3]["user_prompt"]
    assert reference["choices"][0]["turns"][0] in records[2]["user_prompt"]
    assert all(r["score"] == 7.0 for r in records)
    assert all(req["max_tokens"] == 2048 and req["temperature"] == 0.0 for req in server.requests)
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["mtbench_score"] == 7.0 and scores["mtbench_turn2"] == 7.0 and scores["judge_failures"] == 0


@pytest.mark.parametrize("benchmark, reply, first_key", [("arena_hard_v0.1", "[[A>>B]]", "question_id"),
                                                         ("arena_hard_v2.0", "verdict: [[a>>b]]", "uid")])
def test_arena_real_templates(fake_server, shared_benchmarks, tmp_path, benchmark, reply, first_key):
    from salsa.benchmarks.data import load_benchmark

    server = fake_server(lambda n, req: (200, chat_reply(reply), 0, None))
    data = load_benchmark(benchmark, str(shared_benchmarks))
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": q.question_id, "model_id": "m", "choices": [
        {"index": 0, "turns": [{"content": "mine"}]}]}) + "\n" for q in data.questions[:3]))
    assert _judge_stage(["--answers", answers, "--benchmark", benchmark, "--judge", "openai", "--judge-model", "j",
                         "--base-url", server.base_url, "--data-dir", shared_benchmarks, "--out", tmp_path / "out",
                         "--cache-dir", tmp_path / "cache", "--judge-max-tokens", 100]) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "judgments.jsonl").read_text().splitlines()]
    assert len(records) == 3 and first_key in records[0]
    assert all(g["score"] == "A>>B" for r in records for g in r["games"])
    assert len(server.requests) == 6 and server.requests[0]["messages"][0]["role"] == "system"
    game1 = records[0]["games"][0]
    first_user = game1["user_prompt"] if "user_prompt" in game1 else game1["prompt"][1]["content"]
    baseline_text = data.baseline_answers[data.questions[0].question_id].turns[0]
    assert first_user.index(baseline_text) < first_user.index("\nmine\n")          # game 1: baseline is A
    assert all(r["messages"][1]["content"] for r in server.requests)   # (requests arrive in any order)
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    # A>>B in both orders is a wash: exactly 50 for v0.1's BT fit; v2.0 reports the bootstrap mean
    assert scores["arena_winrate"] == pytest.approx(50.0, abs=1e-3 if benchmark == "arena_hard_v0.1" else 10)
    from salsa.cli import main as salsa
    assert salsa(["score", "arena-hard", "--judgments", str(tmp_path / "out" / "judgments.jsonl")]) == 0


# ---------------------------------------------------------------- the stage fails when the judge does

SECRET = "sk-secret-0123456789abcdef"


def _mini_mt_bench(tmp_path, n=4):
    """A self-contained MT-Bench-layout dir (one-turn writing questions) and a model's answers to it."""
    data = tmp_path / "mt_bench"
    data.mkdir()
    (data / "question.jsonl").write_text("".join(json.dumps({"question_id": i, "category": "writing",
                                                             "turns": [f"question {i}"]}) + "\n" for i in range(n)))
    (data / "judge_prompts.jsonl").write_text(json.dumps({
        "name": "single-v1", "type": "single", "system_prompt": "Rate it.", "output_format": "[[rating]]",
        "prompt_template": "Q: {question}\nA: {answer}"}) + "\n")
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": i, "model_id": "m", "choices": [
        {"index": 0, "turns": [f"answer {i}"]}]}) + "\n" for i in range(n)))
    return data, answers


def _mt_stage_argv(server, tmp_path, data, answers, *extra):
    return ["--answers", answers, "--benchmark", "mt_bench", "--judge", "openai", "--judge-model", "j",
            "--base-url", server.base_url, "--data-dir", data, "--out", tmp_path / "out",
            "--cache-dir", tmp_path / "cache", "--api-key-env", "SALSA_TEST_KEY", "--max-retries", 0,
            "--backoff-initial", 0.01, *extra]


@pytest.mark.parametrize("status", [401, 403, 404])
def test_non_retryable_status_stops_the_stage_with_a_redacted_line(fake_server, tmp_path, monkeypatch, capsys,
                                                                   status):
    monkeypatch.setenv("SALSA_TEST_KEY", SECRET)
    server = fake_server(lambda n, req: (status, {"error": {"message": f"Incorrect API key provided: {SECRET}"}},
                                         0, None))
    data, answers = _mini_mt_bench(tmp_path)
    rc = _judge_stage(_mt_stage_argv(server, tmp_path, data, answers, "--concurrency", 1, "--max-retries", 3))
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and f"HTTP {status}" in err
    assert SECRET not in err and "[REDACTED]" in err
    assert len(server.requests) == 1                       # not retried, and the other three never sent
    assert not (tmp_path / "out").exists()


def test_failure_fraction_over_the_limit_fails_the_stage(fake_server, tmp_path, capsys):
    # questions 0 and 1 get a rating, 2 and 3 a reply without one (and 3's rating is out of range)
    def reply(n, req):
        text = req["messages"][1]["content"]
        return 200, chat_reply("[[6]]" if "question 0" in text or "question 1" in text
                               else "[[11]]" if "question 3" in text else "no rating"), 0, None

    server = fake_server(reply)
    data, answers = _mini_mt_bench(tmp_path)
    assert _judge_stage(_mt_stage_argv(server, tmp_path, data, answers)) == 1
    err = capsys.readouterr().err
    assert "2 of 4 verdicts failed (2 unparseable, 0 API errors)" in err and "--max-failure-fraction 0.2" in err
    assert not (tmp_path / "out").exists()
    # exactly at the limit is allowed; the replies come from the cache
    assert _judge_stage(_mt_stage_argv(server, tmp_path, data, answers, "--max-failure-fraction", 0.5)) == 0
    assert len(server.requests) == 4
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["judge_parse_failures"] == 2 and scores["mtbench_score"] == 6.0 and scores["mtbench_n_failed"] == 2


def test_stored_api_errors_are_redacted(fake_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SALSA_TEST_KEY", SECRET)
    server = fake_server(lambda n, req: (500, {"error": {"message": f"upstream saw key {SECRET}"}}, 0, None))
    data, answers = _mini_mt_bench(tmp_path, n=2)
    assert _judge_stage(_mt_stage_argv(server, tmp_path, data, answers, "--max-failure-fraction", 1)) == 0
    out = capsys.readouterr()
    stored = (tmp_path / "out" / "judgments.jsonl").read_text()
    assert "HTTP 500" in stored and "[REDACTED]" in stored
    for text in (stored, out.out, out.err, (tmp_path / "out" / "salsa_meta.json").read_text()):
        assert SECRET not in text
