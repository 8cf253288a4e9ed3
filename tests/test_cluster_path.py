"""The cluster user's path (issue 18), from dry runs of the shipped 7B overlays through both profiles, offline:
judges that exist, a preflight before every GPU job, judges on the machine that runs Snakemake, no landscape job
that cannot succeed, the paper's SFT pair, one node per GPU job (or N with one task per node), derived
runtimes, and no absolute path in any job command."""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from salsa.plan import dry_run_jobs
from test_cluster import PROFILES, dry_run, merged
from test_workflow import DEFAULT, REPO, SNAKEMAKE, scheduled_rules, snakemake

EXPERIMENTS = REPO / "config" / "experiments"
SEVEN_B = ["llama2-7b", "mistral-7b", "gemma-2b"]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", SEVEN_B)
def test_dry_run_of_each_hub_overlay_is_the_cluster_users_path(name, profile, tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", raising=False)   # a user's own would change the warning
    overlay = str(EXPERIMENTS / f"{name}.yaml")
    proc = dry_run(tmp_path, profile, overlay)
    config = merged(EXPERIMENTS / f"{name}.yaml")
    counts = scheduled_rules(proc.stdout)
    jobs = dry_run_jobs(proc.stdout + proc.stderr)
    marker = f"results/{name}/judge_preflight/ok.json"
    # the judges exist today; the preflight job (the bill) is the first one Snakemake picks, and no job waits for
    # it: the onstart check precedes every GPU job (test_the_judges_answer_before_any_gpu_or_api_job_starts)
    judged = [b for b, spec in config["benchmarks"].items() if spec.get("enabled", True)]
    assert {config["benchmarks"][b]["judging"]["judge_model"] for b in judged} == {"gpt-4.1-2025-04-14"}
    assert counts["judge_preflight"] == 1 and "landscape" not in counts
    [preflight] = [j for j in jobs if j["rule"] == "judge_preflight"]
    assert preflight["priority"] == "100" and not [j["rule"] for j in jobs if marker in j["input"]]
    gpu_jobs = [j for j in jobs if int(j["resources"].get("gpu", 0)) > 0]
    assert {j["rule"] for j in gpu_jobs} >= {"sft", "reward_model", "ppo", "evaluate", "evaluate_answers"}
    for job in gpu_jobs:
        assert job["resources"]["nodes"] == "1", job                 # --nodes=1: one launcher, one node
        assert job["shell"].startswith(f"exec python -m salsa.launch --gpus {job['resources']['gpu']} ")
    # the training stages' jobs, and only they, ask for SIGTERM 300 s before their limit (they checkpoint on it)
    signalled = {j["rule"] for j in jobs if "--signal=TERM@300" in j["resources"].get("slurm_extra", "")}
    assert signalled == {"base_model", "sft", "reward_model", "ppo"}
    assert "warning: resources." not in proc.stderr   # the launcher's 290 s wait fits the 300 s lead
    # the SFT pair as the paper trains it: the same data, two seeds
    sft = [j["shell"] for j in jobs if j["rule"] == "sft"]
    assert len(sft) == 2 and all("--data-subset all" in s and "half" not in s for s in sft)
    assert sorted(re.search(r"--seed (\d+)", s).group(1) for s in sft) == ["1", "2"]
    # judges: local rules (checked below) with their share of the global request budget
    judges = [j for j in jobs if j["rule"] == "evaluate_judge"]
    assert judges and all(j["resources"]["api_requests"] == "8" and "--concurrency 8" in j["shell"] for j in judges)
    # runtimes derived from steps x seconds_per_step x 1.5 + 20 minutes
    for stage, steps in (("sft", config["sft"]["steps"]), ("reward_model", config["reward_model"]["steps"]),
                         ("ppo", config["ppo"]["params"]["updates"])):
        expected = math.ceil(steps * config["resources"][stage]["seconds_per_step"] * 1.5 / 60) + 20
        assert {j["resources"]["runtime"] for j in jobs if j["rule"] == stage} == {str(expected)}, stage
    # no absolute path in any job command: a moved checkout (or working directory) changes no command
    for job in jobs:
        tokens = shlex.split(job["shell"]) if job["shell"] and job["shell"] != "None" else []
        assert not [t for t in tokens if t.startswith("/")], (job["rule"], job["shell"])
    arena = [j["shell"] for j in jobs if j["rule"] == "evaluate_answers" and "arena_hard" in j["shell"]]
    cap = config["benchmarks"]["arena_hard_v0.1"]["answer"]["max_new_tokens"]
    assert arena and all(f"--max-new-tokens {cap}" in s for s in arena)


def parsed_workflow(tmp_path: Path, *configfiles: Path):
    """The workflow as Snakemake's own parse sees it (its API: what a dry run does not print)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, ResourceSettings, StorageSettings

    with SnakemakeApi() as api:
        return api.workflow(snakefile=REPO / "Snakefile", workdir=tmp_path, resource_settings=ResourceSettings(),
                            storage_settings=StorageSettings(),
                            config_settings=ConfigSettings(configfiles=[Path(DEFAULT), *configfiles]))._workflow


def local_rules(tmp_path: Path, *configfiles: Path) -> set[str]:
    return set(parsed_workflow(tmp_path, *configfiles)._localrules)


def test_api_judges_and_their_preflight_run_where_snakemake_runs_unless_told_otherwise(tmp_path):
    overlay = EXPERIMENTS / "llama2-7b.yaml"
    assert local_rules(tmp_path, overlay) == {"fetch_benchmark", "evaluate_judge", "judge_preflight"}
    remote = tmp_path / "remote-judges.yaml"
    remote.write_text("resources:\n  bench_judge: {local: false}\n")
    assert local_rules(tmp_path, overlay, remote) == {"fetch_benchmark"}


def test_a_retired_judge_is_refused_in_one_line_before_any_job(tmp_path):
    overlay = tmp_path / "old-judge.yaml"
    overlay.write_text("benchmarks:\n  mt_bench: {judge: openai, judging: {judge_model: gpt-4-0613}}\n")
    proc = dry_run(tmp_path, "slurm", str(EXPERIMENTS / "llama2-7b.yaml"), str(overlay), check=False)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and errors == [
        "error: config: benchmarks.mt_bench.judging.judge_model: gpt-4-0613 was shut down by OpenAI on 2026-10-23 "
        "and answers every request with HTTP 404; use a current model (e.g. gpt-4.1-2025-04-14, docs/judging.md) "
        "or your own endpoint (base_url)"]
    # an API judge with no model is refused as early, not at the first request
    overlay.write_text("benchmarks:\n  arena_hard_v0.1: {judge: openai, judging: {judge_model: ''}}\n")
    proc = dry_run(tmp_path, "slurm", str(EXPERIMENTS / "llama2-7b.yaml"), str(overlay), check=False)
    assert proc.returncode != 0 and [line for line in (proc.stdout + proc.stderr).splitlines()
                                     if line.startswith("error:")] == [
        "error: config: benchmarks.arena_hard_v0.1.judging.judge_model: not set; judge: openai needs the API model "
        "(e.g. gpt-4.1-2025-04-14, docs/judging.md) or the name your endpoint (base_url) serves"]
    # the same name behind your own server (vLLM serving a model under that name) is yours to use
    overlay.write_text("benchmarks:\n  mt_bench: {judge: openai, judging: {judge_model: gpt-4-0613, "
                       "base_url: 'http://127.0.0.1:8000/v1'}}\n")
    dry_run(tmp_path, "slurm", str(EXPERIMENTS / "llama2-7b.yaml"), str(overlay))


def test_the_landscape_and_the_preflight_follow_the_config(tmp_path):
    assert scheduled_rules(snakemake(tmp_path, "-n", "--configfile", DEFAULT).stdout)["landscape"] == 1
    off = tmp_path / "off.yaml"
    off.write_text("landscape: {enabled: false}\n")
    rules = scheduled_rules(snakemake(tmp_path, "-n", "--configfile", DEFAULT, str(off)).stdout)
    assert "landscape" not in rules and "judge_preflight" not in rules   # the toy run has no API judge


def test_a_two_node_job_asks_one_task_and_its_gpus_per_node(tmp_path):
    two = tmp_path / "two-nodes.yaml"
    two.write_text("resources:\n  sft: {nodes: 2, runtime: 600, slurm_extra: --qos=high}\n")
    proc = dry_run(tmp_path, "slurm", str(EXPERIMENTS / "llama2-7b.yaml"), str(two))
    [sft, *_] = [j for j in dry_run_jobs(proc.stdout + proc.stderr) if j["rule"] == "sft"]
    resources = sft["resources"]
    assert (resources["nodes"], resources["tasks"], resources["mpi"], resources["gpu"]) == ("2", "2", "srun", "0")
    assert resources["runtime"] == "600"                                    # an explicit runtime wins
    assert sft["shell"].startswith("exec python -m salsa.launch --gpus 8 --nodes 2 --accelerate-config")
    # what the SLURM plugin submits for these resources (its own submit-string code)
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command

    class Resources(dict):
        __getattr__ = dict.get

    extra = resources["slurm_extra"].strip("'\"")
    job = SimpleNamespace(threads=8, resources=Resources(nodes=2, tasks=2, mpi="srun", mem_mb=400000, runtime=600,
                                                         cpus_per_task=32, slurm_extra=extra))
    submit = get_submit_command(job, {"run_uuid": "u", "slurm_logfile": "l", "comment_str": "c", "account": "",
                                      "partition": "", "workdir": "."})
    assert "--nodes=2" in submit and "--ntasks=2" in submit and "--gpus-per-node=8" in submit
    assert "--qos=high" in submit and "--signal=TERM@300" in submit        # the user's flag and the stop signal
    assert "--gpus=" not in submit                                          # not 16 GPUs split any which way
    # and a one-node GPU job of the shipped overlay: --nodes=1 beside its --gpus=8
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    one = dry_run_jobs(dry_run(tmp_path, "slurm", EXPERIMENTS / "llama2-7b.yaml").stdout)
    [ppo, *_] = [j["resources"] for j in one if j["rule"] == "ppo"]
    job = SimpleNamespace(threads=8, resources=Resources(nodes=int(ppo["nodes"]), gpu=int(ppo["gpu"]),
                                                         mem_mb=int(ppo["mem_mb"]), runtime=int(ppo["runtime"])))
    submit = get_submit_command(job, {"run_uuid": "u", "slurm_logfile": "l", "comment_str": "c", "account": "",
                                      "partition": "", "workdir": "."}) + set_gres_string(job)
    assert "--nodes=1" in submit and "--gpus=8" in submit and "-t 245" in submit


def test_profiles_ask_for_a_global_request_budget_and_a_bad_stop_signal_is_refused(tmp_path):
    for profile in PROFILES.values():
        assert yaml.safe_load((profile / "config.yaml").read_text())["resources"]["api_requests"] >= 1
    # USR1 would end the job-side Snakemake (it handles only TERM), B: only the batch shell: refused before any job
    for wrong in ("USR1@300", "B:TERM@300", "TERM"):
        overlay = tmp_path / "signal.yaml"
        overlay.write_text(f"resources:\n  ppo: {{stop_signal: '{wrong}'}}\n")
        proc = dry_run(tmp_path, "slurm", str(EXPERIMENTS / "llama2-7b.yaml"), str(overlay), check=False)
        assert proc.returncode != 0 and "On instance['resources']['ppo']['stop_signal']" in proc.stdout + proc.stderr


def test_a_stop_signal_lead_longer_than_the_launchers_wait_is_said_at_parse_time(tmp_path, monkeypatch):
    """SIGTERM 900 s before the limit, but the launcher kills its processes 290 s after passing it on."""
    monkeypatch.delenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", raising=False)
    overlay = tmp_path / "lead.yaml"
    overlay.write_text("resources:\n  sft: {stop_signal: 'TERM@900'}\n")
    def warned(proc):
        return [line for line in proc.stderr.splitlines() if line.startswith("warning: resources.")]

    assert warned(dry_run(tmp_path, "slurm", EXPERIMENTS / "llama2-7b.yaml", overlay)) == [
        "warning: resources.sft.stop_signal TERM@900: the job's launcher waits only 290 s for the save on that "
        "signal; export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=890 before starting Snakemake"]
    monkeypatch.setenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "890")
    assert not warned(dry_run(tmp_path, "slurm", EXPERIMENTS / "llama2-7b.yaml", overlay))


def test_salsa_plan_prints_the_gpu_hours_memory_per_gpu_disk_and_the_judge_bill(tmp_path):
    (tmp_path / "my-cluster.yaml").write_text("resources:\n  default: {slurm_partition: gpu}\n")
    command = [sys.executable, "-m", "salsa.cli", "plan", "-d", str(tmp_path), "-s", str(REPO / "Snakefile"),
               "--profile", str(PROFILES["slurm"]), "--configfile", DEFAULT,
               str(EXPERIMENTS / "llama2-7b.yaml"), str(tmp_path / "my-cluster.yaml")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hours, memory = proc.stdout.split("memory per device", 1)
    rows = {line.split()[0]: line.split() for line in hours.splitlines() if line.split()}
    # ppo: 6 jobs x 8 GPUs x (ceil(300 updates x 30 s x 1.5 / 60) + 20 = 245 min)
    assert rows["ppo"][1:] == ["6", "8", "4.1", "196.0"]
    assert re.search(r"^total: 61 jobs, [\d.]+ GPU-hours requested", hours, re.M)
    # memory per device, from each job's own stage arguments and the packaged measurement
    assert "meta-llama/Llama-2-7b-hf@01c7f73d771dfac7d292323805ebc428287df4f9 as llama2-7b, 6.74 B" in memory
    table = {m[0]: m[1:] for m in re.findall(r"^(\w+) +(\d+) +(\w+) +(\d+) +(\d+ x \d+(?: ckpt)?) +([\d.]+) +([\d.]+) "
                                             r"+([\d.]+)( over)?$", memory, re.M)}
    # SFT, by hand: ZeRO-3 states 16 B x 6.74 B / 8 GPUs = 12.55 GiB; per GPU 64 / 8 = 8 sequences x 2048 tokens,
    # checkpointed: 32 layers x 8 KiB kept + one layer's 182.13 KiB per token = 6.85 GiB, its mask 0.06, fp32
    # logits 4 x 32000 x 16384 = 1.95, two gathered bf16 layers 0.75: 22.2 GiB. Saved in bf16 (13.5 GB); resume
    # state bf16 weights + fp32 master + Adam, 14 B per parameter (94.3 GB)
    assert table["sft"] == ("2", "zero3", "8", "8 x 2048 ckpt", "22.2", "13.5", "94.3", "")
    assert table["reward_model"][:4] == ("1", "zero3", "8", "4 x 1536 ckpt")
    assert table["ppo"][:4] == ("6", "zero3", "8", "2 x 768 ckpt") and not table["ppo"][-1]
    bill = {line.split()[0]: line.split() for line in memory.splitlines() if line.split()}  # printed last
    assert bill["mt_bench"][3] == str(80 * 2 * 9) and bill["arena_hard_v0.1"][-1] == "$135.00"
    # on 24 GiB GPUs (20 after headroom) the SFT's 22.2 GiB is flagged, with what to change
    small = subprocess.run([*command[:4], "--gpu-gib", "24", *command[4:]], capture_output=True, text=True,
                           timeout=300, cwd=REPO)
    assert small.returncode == 0, small.stderr[-2000:]
    assert re.search(r"^sft .* 22\.2 .* over$", small.stdout, re.M)
    assert re.search(r"^over 20 of 24 GiB per GPU: .*sft.*: lower micro_batch_size", small.stdout, re.M)


def test_the_open_weight_judge_overlay_points_every_judge_at_the_local_server(tmp_path):
    proc = dry_run(tmp_path, "slurm", EXPERIMENTS / "llama2-7b.yaml", EXPERIMENTS / "judge-open-weight.yaml")
    jobs = dry_run_jobs(proc.stdout + proc.stderr)
    judges = [j for j in jobs if j["rule"] == "evaluate_judge"]
    assert judges and all("--judge-model Qwen/Qwen2.5-72B-Instruct --base-url http://127.0.0.1:8000/v1" in j["shell"]
                          and j["resources"]["api_requests"] == "16" for j in judges)
    [preflight] = [j for j in jobs if j["rule"] == "judge_preflight"]
    assert preflight["shell"].count('"base_url": "http://127.0.0.1:8000/v1"') == 2


def test_judges_that_load_a_model_go_to_the_cluster_by_default(tmp_path):
    reward = tmp_path / "reward-judge.yaml"
    reward.write_text("benchmarks:\n  mt_bench: {judge: reward}\n")
    assert local_rules(tmp_path, EXPERIMENTS / "llama2-7b.yaml", reward) == {"fetch_benchmark"}


def test_a_hub_overlay_can_switch_its_landscape_on(tmp_path):
    on = tmp_path / "landscape-on.yaml"
    on.write_text("landscape: {enabled: true}\n")
    jobs = dry_run_jobs(dry_run(tmp_path, "local-gpu", EXPERIMENTS / "llama2-7b.yaml", on).stdout)
    [job] = [j for j in jobs if j["rule"] == "landscape"]
    assert job["resources"]["gpu"] == "1" and "--dtype bfloat16" in job["shell"] and "--enabled" not in job["shell"]
    assert job["shell"].startswith("exec python -m salsa.launch --gpus 1 ") and "-- salsa.landscape " in job["shell"]


def workstation_run(tmp_path, *configfiles, targets=()):
    """A real run (not a dry run) through the workstation profile, offline, with the configs after config.yaml."""
    command = [arg for arg in SNAKEMAKE if arg not in ("--cores", "2")]
    return subprocess.run([*command, *targets, "-d", str(tmp_path), "--profile", str(PROFILES["local-gpu"]),
                           "--resources", "gpu=8", "--configfile", DEFAULT, *map(str, configfiles)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "sk-test"})


def judge_at(tmp_path, url):
    overlay = tmp_path / "judge-at.yaml"
    overlay.write_text(yaml.safe_dump({"benchmarks": {b: {"judging": {"base_url": url}}
                                                      for b in ("mt_bench", "arena_hard_v0.1")}}))
    return overlay


def test_the_judges_answer_before_any_gpu_or_api_job_starts(tmp_path):
    """onstart, not a file edge: a judge that does not answer stops a real llama2-7b run before its first job."""
    sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
    from bench_helpers import FakeChatServer, chat_reply

    unknown = (404, {"error": {"message": "The model `gpt-4.1-2025-04-14` does not exist", "code": None}}, 0, None)
    with FakeChatServer(lambda n, req: unknown) as server:
        proc = workstation_run(tmp_path, EXPERIMENTS / "llama2-7b.yaml", judge_at(tmp_path, server.base_url))
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
        assert proc.returncode == 1 and len(errors) == 1 and errors[0].startswith(
            f"error: benchmarks.mt_bench.judging.judge_model: {server.base_url} does not know the model "
            "gpt-4.1-2025-04-14 (HTTP 404"), errors
        assert "judge check before evaluate, evaluate_answers, evaluate_judge, ppo, reward_model, sft:" \
            in proc.stdout
        assert not (tmp_path / "results").exists()                         # no job started, not even the data
        # pending jobs that need neither GPUs nor the API are not held up: the preflight job alone runs, and fails
        alone = workstation_run(tmp_path, EXPERIMENTS / "llama2-7b.yaml", judge_at(tmp_path, server.base_url),
                                targets=["results/llama2-7b/judge_preflight/ok.json"])
    assert alone.returncode == 1 and "judge check before" not in alone.stdout
    assert "Error in rule judge_preflight" in alone.stdout + alone.stderr
    # a judge that answers: one probe, then Snakemake starts the jobs (the offline data job then fails)
    with FakeChatServer(lambda n, req: (200, chat_reply("OK"), 0, None)) as server:
        proc = workstation_run(tmp_path, EXPERIMENTS / "llama2-7b.yaml", judge_at(tmp_path, server.base_url),
                               targets=["results/llama2-7b/sft/seed1"])
    assert "judge check before sft:" in proc.stdout and "1 API judge(s) answered" in proc.stdout
    assert len(server.requests) == 1 and server.requests[0]["max_tokens"] == 1
    assert "Error in rule prepare_data" in proc.stdout + proc.stderr


def test_judges_on_the_cluster_must_have_answered_for_this_config_before_gpu_jobs_start(tmp_path):
    """resources.bench_judge.local false: Snakemake's machine cannot ask the judges, so a run with GPU jobs starts
    only once the judge_preflight job (a target of its own) answered for the same judges."""
    sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
    from bench_helpers import FakeChatServer, chat_reply

    remote = tmp_path / "remote.yaml"
    remote.write_text("resources:\n  bench_judge: {local: false}\n")
    marker = tmp_path / "results" / "llama2-7b" / "judge_preflight" / "ok.json"
    with FakeChatServer(lambda n, req: (200, chat_reply("OK"), 0, None)) as server:
        configs = [EXPERIMENTS / "llama2-7b.yaml", judge_at(tmp_path, server.base_url), remote]
        refused = workstation_run(tmp_path, *configs, targets=["results/llama2-7b/sft/seed1"])
        errors = [line for line in (refused.stdout + refused.stderr).splitlines() if line.startswith("error:")]
        assert refused.returncode == 1 and errors == [
            "error: the API judges run on the cluster (resources.bench_judge.local: false) and "
            "results/llama2-7b/judge_preflight/ok.json does not exist: run the same snakemake command with the "
            "target judge_preflight first; then sft can start"], errors
        assert not (tmp_path / "results").exists() and not server.requests
        checked = workstation_run(tmp_path, *configs, targets=["judge_preflight"])
        assert checked.returncode == 0 and marker.is_file() and len(server.requests) == 1, checked.stderr[-2000:]
        started = workstation_run(tmp_path, *configs, targets=["results/llama2-7b/sft/seed1"])
        assert "judge check before sft: answered on the cluster" in started.stdout
        assert "Error in rule prepare_data" in started.stdout + started.stderr   # offline: the data job fails
        # another judge than the one that answered: refused again
        answered = marker.read_text()
        configs[1].write_text(configs[1].read_text().replace(server.base_url, server.base_url + "/other"))
        again = workstation_run(tmp_path, *configs, targets=["results/llama2-7b/sft/seed1"])
    assert again.returncode == 1 and "ok.json checks other judges: run the same snakemake command with the target " \
        "judge_preflight --forcerun judge_preflight first" in again.stdout + again.stderr
    configs[1].write_text(configs[1].read_text().replace("/other", ""))
    # the same judges, checked where Snakemake runs (local: true, then switched to false): the cluster never asked
    marker.write_text(answered.replace('"checked_on": "cluster"', '"checked_on": "snakemake-host"'))
    here = workstation_run(tmp_path, *configs, targets=["results/llama2-7b/sft/seed1"])
    assert here.returncode == 1 and "ok.json was checked on the machine that runs Snakemake, not on the cluster: " \
        "run the same snakemake command with the target judge_preflight --forcerun judge_preflight first" \
        in here.stdout + here.stderr
    # a marker from before judges were recorded, and one that is not a JSON object: the line says how
    for written, state in (('{"judges": []}', "records no judges (an older run)"), ("[]", "is not a JSON object")):
        marker.write_text(written)
        old = workstation_run(tmp_path, *configs, targets=["results/llama2-7b/sft/seed1"])
        assert old.returncode == 1 and f"ok.json {state}: run the same snakemake command with the target " \
            "judge_preflight --forcerun judge_preflight first" in old.stdout + old.stderr


def test_a_judge_that_loads_a_model_sends_the_api_judges_to_the_cluster_and_a_workstation_still_asks_them(tmp_path):
    """Without local: false, a judge that loads a model keeps every judge off the machine that runs Snakemake.
    Under the workstation's local executor that machine runs every job, so onstart asks the API judge itself."""
    sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
    from bench_helpers import FakeChatServer, chat_reply

    reward = tmp_path / "reward-judge.yaml"
    reward.write_text("benchmarks:\n  mt_bench: {judge: reward}\n")
    with FakeChatServer(lambda n, req: (200, chat_reply("OK"), 0, None)) as server:
        configs = [EXPERIMENTS / "llama2-7b.yaml", judge_at(tmp_path, server.base_url), reward]
        mixed = workstation_run(tmp_path, *configs, targets=["results/llama2-7b/sft/seed1"])
    assert "judge check before sft:" in mixed.stdout and "1 API judge(s) answered" in mixed.stdout, mixed.stderr
    assert len(server.requests) == 1 and "Error in rule prepare_data" in mixed.stdout + mixed.stderr
    # under SLURM the same config needs the judge_preflight target first (test_judges_that_load_a_model_go_to_...)


def test_no_job_input_is_ancient_because_snakemake_then_skips_other_reruns(tmp_path):
    """Why the judge check is not a file edge. Snakemake 9.27: when a job reruns, the jobs downstream of it are
    left to be reached from it, and an ancient() edge stops that walk, so their own reasons (here a changed param)
    are never looked at in that invocation. The workflow therefore has no ancient() input."""
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    input: "judged"\n'
        'rule gate:\n    output: "gate"\n    params: v=config.get("gate", 1)\n    shell: "echo {params.v} > {output}"\n'
        'rule train:\n    input: ancient("gate")\n    output: "trained"\n    shell: "touch {output}"\n'
        'rule judge:\n    input: "trained"\n    output: "judged"\n    params: v=config.get("judge", 1)\n'
        '    shell: "echo {params.v} > {output}"\n')
    mini = [sys.executable, "-m", "snakemake", "-s", str(tmp_path / "Snakefile"), "-d", str(tmp_path), "-c1"]
    subprocess.run(mini, check=True, capture_output=True)
    rerun = lambda *config: scheduled_rules(subprocess.run([*mini, "-n", "--config", *config], check=True,  # noqa: E731
                                                           capture_output=True, text=True).stdout)
    assert "judge" in rerun("judge=2")
    assert "judge" not in rerun("gate=2", "judge=2")   # the changed judge param is skipped behind the rerun gate
    rules = list(parsed_workflow(tmp_path, EXPERIMENTS / "llama2-7b.yaml").rules)
    ancient = [(rule.name, str(f)) for rule in rules for f in rule.input if getattr(f, "flags", {}).get("ancient")]
    assert [rule.name for rule in rules] and not ancient, ancient
