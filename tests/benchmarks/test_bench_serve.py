"""A real judge server: `transformers serve` on 127.0.0.1 with a tiny local model, judged through the
OpenAI-compatible path. The random model's replies carry no rating, so every judgment must come
back as a parse failure; the replies are cached, and a rerun with the server gone still succeeds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from bench_helpers import save_tiny_llama
from salsa import artifacts
from salsa.benchmarks import judge

READY_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"transformers serve not ready after {timeout}s")


def write_mini_benchmark(root) -> None:
    """Two MT-Bench-shaped questions with our own text (no benchmark text in the repo)."""
    root.mkdir()
    questions = [{"question_id": 1, "category": "writing", "turns": ["Write one line about rain.", "Shorter."]},
                 {"question_id": 2, "category": "math", "turns": ["What is 2 + 3?", "And times 4?"]}]
    prompts = [{"name": name, "type": "single", "category": "math" if "math" in name else "general",
                "output_format": "[[rating]]", "system_prompt": "Rate the answer from 1 to 10.",
                "prompt_template": template}
               for name, template in (
                   ("single-v1", "Q: {question}\nA: {answer}\nReply with [[rating]]."),
                   ("single-math-v1", "Q: {question}\nRef: {ref_answer_1}\nA: {answer}\nReply with [[rating]]."),
                   ("single-v1-multi-turn", "Q1: {question_1}\nA1: {answer_1}\nQ2: {question_2}\nA2: {answer_2}"),
                   ("single-math-v1-multi-turn", "Q1: {question_1}\nRef1: {ref_answer_1}\nA1: {answer_1}\n"
                                                 "Q2: {question_2}\nRef2: {ref_answer_2}\nA2: {answer_2}"))]
    (root / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (root / "judge_prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    (root / "reference_answer").mkdir()
    (root / "reference_answer" / "gpt-4.jsonl").write_text(json.dumps(
        {"question_id": 2, "model_id": "ref", "choices": [{"index": 0, "turns": ["5", "20"]}]}) + "\n")


@pytest.fixture
def served_judge(embedded_data, tmp_path):
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        pytest.skip("transformers[serving] extras not installed (pip install -e '.[judge]' -c constraints.txt)")
    model_dir = save_tiny_llama(embedded_data / "tokenizer", tmp_path / "judge-model", seed=3, max_positions=512)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "transformers.cli.transformers", "serve", str(model_dir),
                                "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/v1/models", process, READY_TIMEOUT_S)
        yield model_dir, f"http://127.0.0.1:{port}/v1", process
    except (RuntimeError, TimeoutError) as err:
        log.flush()
        pytest.fail(f"{err}\n{(tmp_path / 'serve.log').read_text()[-2000:]}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


def test_openai_judge_against_transformers_serve(served_judge, tmp_path, capsys):
    model_dir, base_url, process = served_judge
    data_dir = tmp_path / "mini_mt"
    write_mini_benchmark(data_dir)
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": qid, "model_id": "policy", "answer_id": str(qid),
                                           "choices": [{"index": 0, "turns": ["first", "second"]}]}) + "\n"
                               for qid in (1, 2)))
    argv = ["--answers", str(answers), "--benchmark", "mt_bench", "--judge", "openai", "--judge-model",
            str(model_dir), "--base-url", base_url, "--api-key-env", "SALSA_NO_SUCH_KEY", "--data-dir",
            str(data_dir), "--judge-max-tokens", "8", "--cache-dir", str(tmp_path / "cache"), "--max-retries", "1",
            "--backoff-initial", "0.05", "--request-timeout", "60", "--progress", "false",
            "--max-failure-fraction", "1"]     # a random tiny judge never rates: keep its judgments anyway
    assert artifacts.run_main(judge.main, argv + ["--out", str(tmp_path / "first")]) == 0
    scores = json.loads((tmp_path / "first" / "scores.json").read_text())
    assert scores["judge_parse_failures"] == 4 and scores["judge_api_errors"] == 0
    records = [json.loads(line) for line in (tmp_path / "first" / "judgments.jsonl").read_text().splitlines()]
    assert [r["judge"][1] for r in records] == ["single-v1", "single-v1-multi-turn",
                                                "single-math-v1", "single-math-v1-multi-turn"]
    assert all(r["score"] == -1 and r["judgment"] and "error" not in r for r in records)
    assert len(list((tmp_path / "cache").glob("*/*.json"))) == 4
    assert "4 API calls" in capsys.readouterr().out

    process.terminate()          # no server any more: the rerun must come from the cache alone
    process.wait(timeout=15)
    assert artifacts.run_main(judge.main, argv + ["--out", str(tmp_path / "second")]) == 0
    assert "4 from cache, 0 API calls" in capsys.readouterr().out
    again = [json.loads(line) for line in (tmp_path / "second" / "judgments.jsonl").read_text().splitlines()]
    assert [r["judgment"] for r in again] == [r["judgment"] for r in records]
