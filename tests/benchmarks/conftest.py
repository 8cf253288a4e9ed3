"""Fixtures for the benchmark tests: tiny local models, the embedded data, a loopback OpenAI server."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench_helpers import FakeChatServer, save_tiny_llama

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_BENCHMARKS = REPO_ROOT.parent / "shared" / "benchmarks"


@pytest.fixture(scope="session")
def shared_benchmarks() -> Path:
    if not (SHARED_BENCHMARKS / "mt_bench" / "question.jsonl").exists():
        pytest.skip(f"public benchmark data not found at {SHARED_BENCHMARKS}")
    return SHARED_BENCHMARKS


@pytest.fixture(scope="session", autouse=True)
def _single_threaded_torch():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny models: threads only add overhead on a 2-core box
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def embedded_data(tmp_path_factory) -> Path:
    """A small prepared data dir (eval_id/ with 40 prompts, task.json, tokenizer/)."""
    from salsa import data

    out = tmp_path_factory.mktemp("prep") / "data"
    data.main(["--out", str(out), "--n-pretrain", "4", "--n-sft", "4", "--n-prefs-train", "4",
               "--n-prefs-eval", "4", "--n-ppo-prompts", "4", "--n-eval-id", "40", "--n-eval-ood", "4"])
    return out


@pytest.fixture(scope="session")
def tiny_policy(embedded_data, tmp_path_factory) -> Path:
    return save_tiny_llama(embedded_data / "tokenizer", tmp_path_factory.mktemp("policy") / "policy", seed=0)


@pytest.fixture(scope="session")
def tiny_sft(embedded_data, tmp_path_factory) -> Path:
    return save_tiny_llama(embedded_data / "tokenizer", tmp_path_factory.mktemp("sft") / "sft-1", seed=1)


@pytest.fixture
def fake_server():
    servers = []

    def start(behaviour):
        server = FakeChatServer(behaviour).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)
