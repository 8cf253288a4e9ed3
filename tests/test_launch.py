"""salsa.launch, the launcher of every GPU-capable job: GPU slots and rendezvous ports on a workstation (CPU,
under a fake GPU count), two "machines" on 127.0.0.1 through the multi-node path, and a retry after a
deterministic StageError that fails at once instead of running the stage again.

Processes are started through `accelerate launch` with the shipped config/accelerate/ddp.yaml (torchrun; gloo
on a machine without GPUs); tests/helpers/launch_probe.py records what each process saw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DDP = "config/accelerate/ddp.yaml"


def launch_env(slots: Path, **extra: str) -> dict[str, str]:
    """GPU locks of the test's fake GPUs in `slots` (SALSA_SLOT_DIR), so they never wait on another run's; the
    rendezvous ports in the machine's own directory, shared with every other launch (tests/test_distributed.py's
    too), so two launches running at once never pick the same port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")
           and k not in ("CUDA_VISIBLE_DEVICES", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "SALSA_GPU_COUNT")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "helpers"), str(REPO / "src")]),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]]), OMP_NUM_THREADS="1",
               SALSA_SLOT_DIR=str(slots), **extra)
    return env


def launch(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "salsa.launch", *args], cwd=REPO, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def records(directory: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json")) if p.name != "weights.json"]


def test_workstation_jobs_get_their_own_gpus_and_ports(tmp_path):
    """Three 2-GPU jobs on a 4-GPU machine: two run at once on disjoint GPUs and ports, the third waits."""
    env = launch_env(tmp_path / "slots", SALSA_GPU_COUNT="4")
    procs = []
    for job in range(3):
        (tmp_path / f"job{job}").mkdir()
        procs.append(launch(["--gpus", "2", "--accelerate-config", DDP, "--output", str(tmp_path / f"out{job}"),
                             "--", "launch_probe", "--record", str(tmp_path / f"job{job}"), "--sleep", "4"],
                            env, tmp_path / f"job{job}.log"))
        time.sleep(0.5)
    for job, proc in enumerate(procs):
        assert proc.wait(timeout=180) == 0, (tmp_path / f"job{job}.log").read_text()[-2000:]
    jobs = []
    for job in range(3):
        seen = records(tmp_path / f"job{job}")
        assert len(seen) == 2 and {r["WORLD_SIZE"] for r in seen} == {"2"}
        assert len({r["CUDA_VISIBLE_DEVICES"] for r in seen}) == 1 and len({r["MASTER_PORT"] for r in seen}) == 1
        gpus = set(seen[0]["CUDA_VISIBLE_DEVICES"].split(","))
        assert len(gpus) == 2 and gpus <= {"0", "1", "2", "3"}
        # on a stop signal the launcher waits this long for its processes to checkpoint (torchelastic's own is 30 s)
        assert {r["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] for r in seen} == {"290"}
        # the port is the one salsa.launch locked (accelerate would move off a port in use, but only one that is
        # in use when it looks: two jobs starting together could both pick 29500)
        said = (tmp_path / f"job{job}.log").read_text()
        assert f"GPUs {seen[0]['CUDA_VISIBLE_DEVICES']}, port {seen[0]['MASTER_PORT']}" in said, said
        jobs.append({"gpus": gpus, "port": seen[0]["MASTER_PORT"], "start": min(r["start"] for r in seen),
                     "end": max(r["end"] for r in seen)})
    for a in range(3):
        for b in range(a + 1, 3):
            overlap = jobs[a]["start"] < jobs[b]["end"] and jobs[b]["start"] < jobs[a]["end"]
            if overlap:   # jobs running at the same time never share a GPU or a rendezvous port
                assert not jobs[a]["gpus"] & jobs[b]["gpus"] and jobs[a]["port"] != jobs[b]["port"], jobs
    running_together = sum(jobs[a]["start"] < jobs[b]["end"] and jobs[b]["start"] < jobs[a]["end"]
                           for a in range(3) for b in range(a + 1, 3))
    assert running_together >= 1, jobs                      # two jobs did share the machine
    last = max(jobs, key=lambda j: j["start"])
    assert last["start"] >= min(j["end"] for j in jobs if j is not last) - 0.5, jobs   # the third waited
    assert "waiting for 2 free GPUs of 4" in "".join((tmp_path / f"job{j}.log").read_text() for j in range(3))


def test_one_gpu_job_runs_one_process_on_its_slot_and_too_many_gpus_is_one_line(tmp_path):
    env = launch_env(tmp_path / "slots", CUDA_VISIBLE_DEVICES="5,7")   # the user lends GPUs 5 and 7 only
    (tmp_path / "rec").mkdir()
    proc = launch(["--gpus", "1", "--", "launch_probe", "--record", str(tmp_path / "rec")], env, tmp_path / "a.log")
    assert proc.wait(timeout=60) == 0, (tmp_path / "a.log").read_text()
    [seen] = records(tmp_path / "rec")
    assert seen["CUDA_VISIBLE_DEVICES"] == "5" and seen["WORLD_SIZE"] is None    # python -m, no launcher
    assert seen["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] is None
    proc = launch(["--gpus", "3", "--accelerate-config", DDP, "--", "launch_probe", "--record", "x"], env,
                  tmp_path / "b.log")
    assert proc.wait(timeout=60) == 1
    assert (tmp_path / "b.log").read_text().strip().splitlines() == [
        "error: the job asks for 3 GPUs; this machine lends 2 (CUDA_VISIBLE_DEVICES)"]


def test_the_launchers_wait_for_a_checkpoint_on_a_stop_signal_is_the_users_if_set(monkeypatch):
    from salsa import launch as launcher

    monkeypatch.delenv(launcher.SHUTDOWN_TIMEOUT, raising=False)
    assert launcher.stop_grace([sys.executable, "-m", "accelerate.commands.launch"]) == {
        launcher.SHUTDOWN_TIMEOUT: str(launcher.STOP_GRACE_S)}
    assert launcher.stop_grace([sys.executable, "-m", "salsa.sft"]) == {}
    monkeypatch.setenv(launcher.SHUTDOWN_TIMEOUT, "600")
    assert launcher.stop_grace([sys.executable, "-m", "accelerate.commands.launch"]) == {}


@pytest.mark.slow  # three 2-process trainings (~40 s): `make test-slow`
def test_two_machines_on_localhost_equal_one_machine_of_the_same_world_size(tmp_path):
    """The multi-node path (one launcher per node, machine rank from SLURM_NODEID, main address from the step's
    first node) trains exactly what one machine with two processes trains."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    single = launch(["--gpus", "2", "--accelerate-config", DDP, "--", "launch_probe", "--record", str(one),
                     "--train"], launch_env(tmp_path / "slots"), tmp_path / "one.log")
    assert single.wait(timeout=180) == 0, (tmp_path / "one.log").read_text()[-2000:]
    nodes = [launch(["--gpus", "1", "--nodes", "2", "--node-task", "--accelerate-config", DDP, "--",
                     "launch_probe", "--record", str(two), "--train"],
                    launch_env(tmp_path / "slots", SLURM_JOB_ID="4242", SLURM_NODEID=str(rank),
                               SLURM_STEP_NODELIST="127.0.0.1"), tmp_path / f"node{rank}.log") for rank in (0, 1)]
    for rank, node in enumerate(nodes):
        assert node.wait(timeout=180) == 0, (tmp_path / f"node{rank}.log").read_text()[-2000:]
    seen = records(two)
    assert sorted((r["GROUP_RANK"], r["RANK"], r["WORLD_SIZE"]) for r in seen) == [("0", "0", "2"), ("1", "1", "2")]
    assert {r["MASTER_ADDR"] for r in seen} == {"127.0.0.1"} and {r["MASTER_PORT"] for r in seen} == {"34242"}
    assert json.loads((two / "weights.json").read_text()) == json.loads((one / "weights.json").read_text())


def test_multi_node_outside_slurm_is_refused_in_one_line(tmp_path):
    proc = launch(["--gpus", "8", "--nodes", "2", "--", "launch_probe", "--record", "x"], launch_env(tmp_path / "slots"),
                  tmp_path / "log")
    assert proc.wait(timeout=60) == 1
    assert (tmp_path / "log").read_text().strip().splitlines() == [
        "error: --nodes 2: multi-node jobs run under SLURM (profiles/slurm); on one machine set "
        "resources.<stage>.nodes to 1"]


def run_launch(tmp_path: Path, attempt: int, command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "salsa.launch", "--gpus", "0", "--output", str(tmp_path / "soup"),
                           "--attempt", str(attempt), "--", *command], cwd=REPO, env=launch_env(tmp_path / "slots"),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("fails_with", ["stage_error", "crash"])
def test_a_retry_after_a_stage_error_fails_at_once(tmp_path, fails_with):
    """A StageError is deterministic: attempt 2 of the same job prints the recorded line and does not run the
    stage (here a command that would succeed); a crash records nothing, so its retry runs."""
    marker = tmp_path / ".soup.stage_error"
    failing = (["salsa.soup", "--inputs", str(tmp_path / "missing-a"), str(tmp_path / "missing-b"), "--out",
                str(tmp_path / "soup")] if fails_with == "stage_error"
               else ["launch_probe", "--record", str(tmp_path / "no-such-dir")])
    first = run_launch(tmp_path, 1, failing)
    assert first.returncode == 1
    succeeding = ["launch_probe", "--record", str(tmp_path)]
    retry = run_launch(tmp_path, 2, succeeding)
    if fails_with == "stage_error":
        line = marker.read_text().strip()
        assert line.startswith("error: ") and "missing-a" in line and line in first.stderr
        assert retry.returncode == 1 and line in retry.stderr and "not rerun" in retry.stderr
        assert not records(tmp_path)                        # the stage did not start
        again = run_launch(tmp_path, 1, succeeding)         # a new Snakemake run (attempt 1) starts afresh
        assert again.returncode == 0 and not marker.exists() and len(records(tmp_path)) == 1
    else:
        assert not marker.exists()
        assert retry.returncode == 0 and len(records(tmp_path)) == 1


@pytest.mark.slow  # the real workflow's data, base and SFT jobs (~55 s): `make test-slow`
def test_the_workstation_profile_runs_two_one_gpu_jobs_on_two_gpus(tmp_path):
    """The real workflow through profiles/local-gpu on a machine that says it has two GPUs: the two SFT jobs run
    at once, each on a GPU of its own (each job's log starts with what salsa.launch gave it)."""
    from test_workflow import DEFAULT, SNAKEMAKE, TINY

    overlay = tmp_path / "sft-on-gpus.yaml"
    overlay.write_text("resources:\n  sft: {gpus: 1}\n")
    command = [arg for arg in SNAKEMAKE if arg not in ("--cores", "2")]
    proc = subprocess.run([*command, "-d", str(tmp_path), "--profile", str(REPO / "profiles" / "local-gpu"),
                           "--cores", "2", "--resources", "gpu=2", "--configfile", DEFAULT, TINY, str(overlay), "--",
                           "results/tiny/sft/seed1", "results/tiny/sft/seed2"], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env=launch_env(tmp_path / "slots", SALSA_GPU_COUNT="2"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    given = [(tmp_path / f"results/tiny/logs/sft/seed{s}.log").read_text().splitlines()[0] for s in (1, 2)]
    assert sorted(given) == ["salsa.launch: GPUs 0", "salsa.launch: GPUs 1"], given


def test_a_port_another_program_listens_on_is_skipped(tmp_path):
    import socket

    from salsa import launch

    # the port a fresh slot directory would hand out (a launch of another test file may hold a lower one)
    first = next(p for p in range(launch.PORT_BASE, launch.PORT_BASE + launch.PORT_SLOTS) if launch.port_is_free(p))
    with socket.socket() as busy:
        busy.bind(("", first))
        busy.listen()
        port = launch.take_port(tmp_path)
        assert port != first and launch.port_is_free(port)
        assert not launch.port_is_free(first)


def test_ports_are_locked_for_the_whole_machine_whatever_gpu_pool_salsa_slot_dir_names(tmp_path, monkeypatch):
    """Two launches with their own GPU pools (SALSA_SLOT_DIR) still never take the same rendezvous port."""
    from salsa import launch

    held = next(k for k in range(launch.PORT_SLOTS) if launch.port_is_free(launch.PORT_BASE + k)
                and (fd := launch._try_lock(launch.machine_slot_dir() / f"port-{k}.lock")) is not None)
    try:   # the first free port slot, held as a running job of another pool holds it
        monkeypatch.setenv("SALSA_SLOT_DIR", str(tmp_path / "pool"))
        args, command = launch.parse(["--gpus", "0", "--processes", "2", "--accelerate-config", DDP, "--",
                                      "salsa.sft"])
        where = launch.placement(args, command)[2]
        assert where.startswith("port ") and where != f"port {launch.PORT_BASE + held}", where
    finally:
        os.close(fd)
