"""judge_preflight against local OpenAI-compatible servers: a wrong key, a wrong endpoint, an unknown and a
retired model are each refused with one line; a judge that answers gets one request and a bill."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("openai", reason="the openai client is the judge extra: pip install -e '.[judge]'")

from bench_helpers import chat_reply  # noqa: E402
from salsa import artifacts  # noqa: E402
from salsa.judges import preflight  # noqa: E402
from test_bench_serve import free_port, served_judge  # noqa: E402,F401  (the transformers serve fixture)

PRICE = {"input_per_million": 2.0, "output_per_million": 8.0}


def plan(base_url, model="judge-x", key_env="SALSA_TEST_PREFLIGHT_KEY", models=9):
    common = {"judge_model": model, "api_key_env": key_env, "models": models,
              **({"base_url": base_url} if base_url else {})}
    return json.dumps([{"benchmark": "mt_bench", **common, "cost": PRICE},
                       {"benchmark": "arena_hard_v0.1", **common, "cost": PRICE}])


def run(tmp_path, capsys, plan_json):
    code = artifacts.run_main(preflight.main, ["--plan", plan_json, "--out", str(tmp_path / "ok.json"),
                                               "--timeout", "5"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def error_reply(status, message):
    return lambda n, req: (status, {"error": {"message": message, "code": None}}, 0, None)


def test_a_judge_that_answers_gets_one_request_and_the_bill_is_printed(fake_server, tmp_path, capsys):
    server = fake_server(lambda n, req: (200, chat_reply("OK"), 0, None))
    code, out, err = run(tmp_path, capsys, plan(server.base_url))
    assert code == 0 and err == []
    assert len(server.requests) == 1                       # one judge, two benchmarks: one probe
    assert server.requests[0]["max_tokens"] == 1
    bill = {j["benchmark"]: j for j in json.loads((tmp_path / "ok.json").read_text())["judges"]}
    assert bill["mt_bench"]["calls"] == 80 * 2 * 9 and bill["arena_hard_v0.1"]["calls"] == 500 * 2 * 9
    # 1440 calls x (1200 in, 300 out) tokens at $2 / $8 per million
    assert bill["mt_bench"]["cost_usd"] == round(1440 * (1200 * 2.0 + 300 * 8.0) / 1e6, 2)
    assert "total: 10440 calls" in out


@pytest.mark.parametrize("status, message, expected", [
    (401, "Incorrect API key provided: sk-abcd1234****", "rejected the key in $SALSA_TEST_PREFLIGHT_KEY (HTTP 401"),
    (404, "The model `judge-x` does not exist", "does not know the model judge-x (HTTP 404"),
    (429, "You exceeded your current quota (insufficient_quota)", "has no quota left"),
])
def test_a_refusing_server_is_one_line(fake_server, tmp_path, capsys, monkeypatch, status, message, expected):
    monkeypatch.setenv("SALSA_TEST_PREFLIGHT_KEY", "sk-wrong-key-123456")
    server = fake_server(error_reply(status, message))
    code, out, err = run(tmp_path, capsys, plan(server.base_url))
    assert code == 1 and len(err) == 1 and expected in err[0], err
    assert "sk-wrong-key-123456" not in err[0] and "sk-abcd1234" not in err[0]
    assert not (tmp_path / "ok.json").exists() and len(server.requests) == 1


def test_an_unreachable_endpoint_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(preflight, "PROBE_BACKOFF_S", 0.01)
    url = f"http://127.0.0.1:{free_port()}/v1"              # nothing listens there
    code, out, err = run(tmp_path, capsys, plan(url))
    assert code == 1 and err == [f"error: benchmarks.mt_bench.judging.base_url: {url} is unreachable "
                                 "(Connection error.), 3 tries"]


def test_missing_key_and_retired_model_need_no_network(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SALSA_TEST_PREFLIGHT_KEY", raising=False)
    code, _, err = run(tmp_path, capsys, plan(None, model="gpt-4.1-2025-04-14"))
    assert code == 1 and err == ["error: benchmarks.mt_bench.judging: $SALSA_TEST_PREFLIGHT_KEY is not set; the judge "
                                 "gpt-4.1-2025-04-14 at https://api.openai.com/v1 needs its API key"]
    code, _, err = run(tmp_path, capsys, plan(None, model="gpt-4-1106-preview"))
    assert code == 1 and len(err) == 1 and "gpt-4-1106-preview was shut down by OpenAI on 2026-03-26" in err[0]


def test_preflight_against_transformers_serve(served_judge, tmp_path, capsys):
    """A real OpenAI-compatible server: the model it serves answers; a model name it cannot load is refused."""
    model_dir, base_url, _ = served_judge
    code, out, err = run(tmp_path, capsys, plan(base_url, model=str(model_dir), models=1))
    assert code == 0 and err == [] and "1 API judge(s) answered" in out
    code, out, err = run(tmp_path, capsys, plan(base_url, model=str(tmp_path / "no-such-model"), models=1))
    assert code == 1 and len(err) == 1 and base_url in err[0], err
