"""salsa fetch-benchmarks: pinned sources, sha256 checks, a local copy, and the checksum check on read."""

from __future__ import annotations

import io
import shutil

import pytest

from salsa import artifacts
from salsa.artifacts import StageError
from salsa.benchmarks import fetch
from salsa.benchmarks.data import load_benchmark


def run_fetch(argv) -> int:
    return artifacts.run_main(fetch.main, [str(a) for a in argv])


def test_local_copy_is_verified_and_loadable(shared_benchmarks, tmp_path):
    out = tmp_path / "mt_bench"
    assert run_fetch(["--benchmark", "mt_bench", "--from-dir", shared_benchmarks, "--out", out]) == 0
    sums = (out / fetch.CHECKSUMS).read_text().splitlines()
    assert len(sums) == 3 and sums[0].endswith("  question.jsonl")
    assert sums[0].split()[0] == fetch.sha256_of(shared_benchmarks / "mt_bench" / "question.jsonl")
    data = load_benchmark("mt_bench", str(out))
    assert len(data.questions) == 80 and len(data.judge_prompts) == 8 and len(data.reference_answers) == 30
    meta = artifacts.read_json(out / "salsa_meta.json")
    assert [f["pinned"] for f in meta["files"]] == [True, True, True]


def test_v2_copy_brings_the_v01_judge_prompt(shared_benchmarks, tmp_path):
    out = tmp_path / "v2"
    assert run_fetch(["--benchmark", "arena_hard_v2.0", "--from-dir", shared_benchmarks, "--out", out]) == 0
    data = load_benchmark("arena_hard_v2.0", str(out))
    assert len(data.questions) == 500 and data.arena_settings.system_prompt("hard_prompt")


def test_a_modified_copy_is_refused(shared_benchmarks, tmp_path, capsys):
    copy = tmp_path / "copy" / "mt_bench"
    shutil.copytree(shared_benchmarks / "mt_bench", copy)
    prompts = copy / "judge_prompts.jsonl"
    prompts.chmod(0o644)
    prompts.write_text(prompts.read_text().replace("[[rating]]", "[[score]]", 1))
    assert run_fetch(["--benchmark", "mt_bench", "--from-dir", copy.parent, "--out", tmp_path / "out"]) == 1
    err = capsys.readouterr().err
    assert f"{prompts}: sha256" in err and "differs from the pinned fd283293" in err
    assert not (tmp_path / "out").exists()


def test_a_fetched_file_changed_later_is_refused_on_read(shared_benchmarks, tmp_path):
    out = tmp_path / "v01"
    assert run_fetch(["--benchmark", "arena_hard_v0.1", "--from-dir", shared_benchmarks, "--out", out]) == 0
    assert len(load_benchmark("arena_hard_v0.1", str(out)).questions) == 500
    with open(out / "question.jsonl", "a") as handle:
        handle.write('{"question_id": "extra", "turns": [{"content": "x"}]}\n')
    with pytest.raises(StageError, match="question.jsonl: sha256 differs from .*SHA256SUMS:1"):
        load_benchmark("arena_hard_v0.1", str(out))


def test_missing_local_dir_names_the_config_key(tmp_path, capsys):
    assert run_fetch(["--benchmark", "mt_bench", "--from-dir", tmp_path / "nowhere", "--out", tmp_path / "o"]) == 1
    assert "benchmarks.mt_bench.data_dir" in capsys.readouterr().err


def test_pinned_sources_go_through_the_hub_and_url_downloaders(shared_benchmarks, tmp_path, monkeypatch):
    """The real download calls, with huggingface_hub and urllib answering from the local copy."""
    import huggingface_hub
    import urllib.request

    hub_calls, urls = [], []
    local = {"data/arena-hard-v2.0/question.jsonl": "arena_hard_v2.0/question.jsonl",
             "data/arena-hard-v2.0/model_answer/o3-mini-2025-01-31.jsonl":
                 "arena_hard_v2.0/model_answer/o3-mini-2025-01-31.jsonl"}

    def fake_hf_hub_download(repo_id, filename, repo_type=None, revision=None):
        hub_calls.append((repo_id, filename, repo_type, revision))
        return str(shared_benchmarks / local[filename])

    def fake_urlopen(url, timeout=None):
        urls.append(url)
        name = url.rsplit("/", 1)[1]
        folder = "arena_hard_v0.1" if name == "judge_config.yaml" else "arena_hard_v2.0"
        return io.BytesIO((shared_benchmarks / folder / name).read_bytes())

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    out = tmp_path / "v2"
    assert run_fetch(["--benchmark", "arena_hard_v2.0", "--out", out]) == 0
    assert hub_calls == [("lmarena-ai/arena-hard-auto", f, "dataset", fetch.ARENA_HUB_REVISION) for f in local]
    assert urls == [f"{fetch.ARENA_GITHUB_HEAD}/config/arena-hard-v2.0.yaml",
                    f"{fetch.ARENA_GITHUB_V01}/config/judge_config.yaml"]
    assert len(load_benchmark("arena_hard_v2.0", str(out)).questions) == 500
    origins = [f["origin"] for f in artifacts.read_json(out / "salsa_meta.json")["files"]]
    assert origins[0] == f"hf://lmarena-ai/arena-hard-auto@{fetch.ARENA_HUB_REVISION}/data/arena-hard-v2.0/question.jsonl"


def test_hub_offline_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert run_fetch(["--benchmark", "arena_hard_v0.1", "--out", tmp_path / "o"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: hub dataset lmarena-ai/arena-hard-auto@{fetch.ARENA_HUB_REVISION}: "
                          f"data/arena-hard-v0.1/question.jsonl")
