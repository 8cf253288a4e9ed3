"""Start a stage where its job landed: its own GPUs and rendezvous port, one launcher per node.

The rules call every GPU-capable stage through this module (rules/jobs.smk: launcher):

  python -m salsa.launch --gpus 8 [--nodes 2] [--accelerate-config config/accelerate/ddp.yaml]
      --output results/x/sft/seed1 --attempt 1 -- salsa.sft --flags...

* **Workstation** (no SLURM job): the job takes `--gpus` GPU slots from the machine's pool
  (CUDA_VISIBLE_DEVICES if set, else SALSA_GPU_COUNT, else `nvidia-smi -L`) by locking one file
  per GPU, and sets CUDA_VISIBLE_DEVICES to them. Snakemake's `gpu` resource keeps the sum of
  requests within the machine; the locks make sure two jobs never get the same GPU. A machine
  with no GPU at all (a CPU rehearsal) runs the processes on CPU and says so in the job's log.
* **Rendezvous port**: a multi-process job locks a port slot (29500 + k), so two jobs on one
  machine (a workstation, or two 4-GPU jobs on one SLURM node) never share a port.
* **SLURM, one node**: SLURM gives the job its GPUs; only the port is chosen here.
* **SLURM, N nodes**: `srun` starts this module once per node (`--node-task`); each starts
  `accelerate launch --num_machines N --machine_rank $SLURM_NODEID` with the main address of the
  step's first node and a port derived from the job id, the same on every node.
* **Stop signals**: a multi-process job's launcher (torchelastic, under `accelerate launch`) passes SIGTERM on to
  its processes and SIGKILLs them after TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 30 s by default: too short for a 7B stage
  to finish its step and save its resume state. The launcher gets STOP_GRACE_S unless the variable is set.
* **Deterministic failures**: the stage's one-line StageError is recorded beside the output
  (`.<name>.stage_error`, through SALSA_STAGE_ERROR_FILE, read by artifacts.run_main); a retry
  of the same job (`--attempt` > 1) then fails at once with that line instead of running again.

Locks are `fcntl.flock`s on files in <tmp>/salsa-slots-<user> (GPU locks in SALSA_SLOT_DIR instead when
it is set; port locks always there, as ports are the machine's); they are inherited by the exec'd stage
and released by the kernel when the job's processes end, however they end.
"""

from __future__ import annotations

import argparse
import fcntl
import getpass
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PORT_BASE = 29500
PORT_SLOTS = 200
MULTI_NODE_PORT_BASE = 30000   # multi-node jobs: 30000 + job id mod 10000, the same on every node
SLOT_WAIT_S = 2.0
# seconds torchelastic waits for the processes to checkpoint on a stop signal before it kills them: just under the
# 300 s by which resources.<stage>.stop_signal (TERM@300) precedes the time limit, when SLURM kills the job anyway
STOP_GRACE_S = 290
SHUTDOWN_TIMEOUT = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"


class LaunchError(Exception):
    """One line, printed as `error: ...`; the job exits 1."""


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise LaunchError("salsa.launch: expected `-- MODULE [ARGS...]` after its own flags")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m salsa.launch")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs of the job on each node (processes per node)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes of the job (SLURM only when > 1)")
    parser.add_argument("--accelerate-config", default=None, help="accelerate config file (processes > 1)")
    parser.add_argument("--processes", type=int, default=None,
                        help="processes per node (default: --gpus); CPU rehearsals set it without GPUs")
    parser.add_argument("--output", default=None, help="the rule's output (the stage-error marker goes beside it)")
    parser.add_argument("--attempt", type=int, default=1, help="Snakemake's attempt number of this job")
    parser.add_argument("--node-task", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        raise LaunchError("salsa.launch: no module after `--`")
    return args, command


def error_marker(output: str | None) -> Path | None:
    if not output:
        return None
    path = Path(output.rstrip("/"))
    return path.parent / f".{path.name}.stage_error"


def machine_slot_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"salsa-slots-{getpass.getuser()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def slot_dir() -> Path:
    """Where GPU locks live: SALSA_SLOT_DIR (e.g. a pool shared with another user), else the machine's."""
    if not os.environ.get("SALSA_SLOT_DIR"):
        return machine_slot_dir()
    path = Path(os.environ["SALSA_SLOT_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def gpu_pool() -> list[str]:
    """The GPUs this machine lends to jobs, as CUDA_VISIBLE_DEVICES entries."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    if os.environ.get("SALSA_GPU_COUNT"):
        return [str(i) for i in range(int(os.environ["SALSA_GPU_COUNT"]))]
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        return [str(i) for i, line in enumerate(listed.stdout.splitlines()) if line.startswith("GPU ")]
    return []


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.set_inheritable(fd, True)   # held by the exec'd stage and its children until they all exit
    return fd


def take_gpus(count: int, pool: list[str], directory: Path, wait_s: float = SLOT_WAIT_S) -> list[str]:
    """Lock `count` GPUs of the pool; waits while fewer are free (another Snakemake run may hold some)."""
    if count > len(pool):
        raise LaunchError(f"the job asks for {count} GPUs; this machine lends {len(pool)} "
                          f"({'CUDA_VISIBLE_DEVICES' if 'CUDA_VISIBLE_DEVICES' in os.environ else 'SALSA_GPU_COUNT or nvidia-smi'})")
    announced = False
    while True:
        taken: list[tuple[str, int]] = []
        for gpu in pool:
            fd = _try_lock(directory / f"gpu-{gpu}.lock")
            if fd is not None:
                taken.append((gpu, fd))
                if len(taken) == count:
                    return [g for g, _ in taken]
        for _, fd in taken:   # not enough free: give back what we took, so two waiters cannot deadlock
            os.close(fd)
        if not announced:
            print(f"salsa.launch: waiting for {count} free GPUs of {len(pool)}", file=sys.stderr, flush=True)
            announced = True
        time.sleep(wait_s)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # a port in TIME_WAIT is free for the store
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def take_port(directory: Path) -> int:
    """The first port slot no other salsa job holds and no other program listens on."""
    for slot in range(PORT_SLOTS):
        fd = _try_lock(directory / f"port-{slot}.lock")
        if fd is None:
            continue
        if port_is_free(PORT_BASE + slot):
            return PORT_BASE + slot
        os.close(fd)   # someone else's process has it: keep looking
    raise LaunchError(f"all {PORT_SLOTS} rendezvous port slots of {directory} are taken")


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (`node[01-04],gpu7` -> node01)."""
    if "[" not in nodelist:
        return nodelist.split(",")[0]
    shown = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return shown.stdout.split()[0]


def accelerate_command(args: argparse.Namespace, command: list[str], port: int, machines: int = 1,
                       machine_rank: int = 0, main_ip: str | None = None) -> list[str]:
    module, rest = command[0], command[1:]
    per_node = args.processes or args.gpus
    if per_node * machines <= 1:
        return [sys.executable, "-m", module, *rest]
    if not args.accelerate_config:
        raise LaunchError(f"{module}: {per_node * machines} processes need --accelerate-config")
    # the interpreter's own accelerate, not whichever `accelerate` the job's PATH finds first
    line = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", args.accelerate_config,
            "--num_processes", str(per_node * machines), "--main_process_port", str(port)]
    if machines > 1:
        line += ["--num_machines", str(machines), "--machine_rank", str(machine_rank),
                 "--main_process_ip", main_ip]
    return [*line, "-m", module, *rest]


def node_task(args: argparse.Namespace, command: list[str]) -> list[str]:
    """One node of a multi-node job: machine rank and main address from the SLURM step."""
    try:
        rank = int(os.environ["SLURM_NODEID"])
        nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ["SLURM_JOB_NODELIST"]
        job_id = int(os.environ["SLURM_JOB_ID"])
    except KeyError as missing:
        raise LaunchError(f"--nodes {args.nodes}: {missing.args[0]} is not set; a multi-node job runs under SLURM")
    port = MULTI_NODE_PORT_BASE + job_id % 10000
    return accelerate_command(args, command, port, args.nodes, rank, first_host(nodelist))


def stop_grace(argv: list[str]) -> dict[str, str]:
    """The launcher's wait for its processes to checkpoint on a stop signal (a user's own setting wins)."""
    launches = argv[1:3] == ["-m", "accelerate.commands.launch"]
    return {SHUTDOWN_TIMEOUT: str(STOP_GRACE_S)} if launches and SHUTDOWN_TIMEOUT not in os.environ else {}


def plan(args: argparse.Namespace, command: list[str]) -> tuple[list[str], dict[str, str], str]:
    """(argv to exec, environment changes, one line saying where the job runs)."""
    argv, env, where = placement(args, command)
    return argv, {**env, **stop_grace(argv)}, where


def placement(args: argparse.Namespace, command: list[str]) -> tuple[list[str], dict[str, str], str]:
    env: dict[str, str] = {}
    in_slurm = bool(os.environ.get("SLURM_JOB_ID"))
    if args.nodes > 1:
        if args.node_task:
            argv = node_task(args, command)
            return argv, env, f"node {os.environ['SLURM_NODEID']} of {args.nodes}: {shlex.join(argv[:12])} ..."
        if not in_slurm:
            raise LaunchError(f"--nodes {args.nodes}: multi-node jobs run under SLURM (profiles/slurm); "
                              "on one machine set resources.<stage>.nodes to 1")
        srun = ["srun", f"--nodes={args.nodes}", f"--ntasks={args.nodes}", "--ntasks-per-node=1",
                "--kill-on-bad-exit=1"]
        if args.gpus:
            srun.append(f"--gpus-per-node={args.gpus}")
        own = [f"--gpus={args.gpus}", f"--nodes={args.nodes}", f"--attempt={args.attempt}", "--node-task"]
        if args.accelerate_config:
            own.append(f"--accelerate-config={args.accelerate_config}")
        if args.processes:
            own.append(f"--processes={args.processes}")
        if args.output:
            own.append(f"--output={args.output}")
        argv = [*srun, sys.executable, "-m", "salsa.launch", *own, "--", *command]
        return argv, env, f"{args.nodes} nodes x {args.gpus} GPUs through srun"
    where = []
    pool = gpu_pool() if args.gpus > 0 and not in_slurm else []
    if pool:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(take_gpus(args.gpus, pool, slot_dir()))
        where.append(f"GPUs {env['CUDA_VISIBLE_DEVICES']}")
    elif args.gpus > 0 and not in_slurm:   # CPU rehearsals of GPU overlays: the processes, without GPUs
        where.append(f"no GPU on this machine: {args.processes or args.gpus} process(es) on CPU")
    # a port is the machine's whatever pool SALSA_SLOT_DIR names: every launch of this user locks it in one place
    port = take_port(machine_slot_dir()) if (args.processes or args.gpus) > 1 else PORT_BASE
    if (args.processes or args.gpus) > 1:
        where.append(f"port {port}")
    argv = accelerate_command(args, command, port)
    return argv, env, ", ".join(where) or "one process"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, command = parse(argv)
        marker = error_marker(args.output)
        if marker is not None and not args.node_task:
            if args.attempt > 1 and marker.is_file():
                # the stage failed with a deterministic error on an earlier attempt: same inputs, same error
                print(f"{marker.read_text().strip()} (attempt {args.attempt}: not rerun; the earlier attempt "
                      f"failed with this error, see {marker})", file=sys.stderr)
                return 1
            if args.attempt == 1:
                marker.unlink(missing_ok=True)
        exec_argv, env, where = plan(args, command)
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if marker is not None:
        env["SALSA_STAGE_ERROR_FILE"] = str(marker)
    print(f"salsa.launch: {where}", file=sys.stderr, flush=True)
    os.environ.update(env)
    sys.stdout.flush()
    os.execvp(exec_argv[0], exec_argv)
    return 127   # not reached


if __name__ == "__main__":
    raise SystemExit(main())
