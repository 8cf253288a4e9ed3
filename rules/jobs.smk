# How jobs run: resources per stage, the launcher (salsa.launch), conda environments, and the API judges'
# check before any GPU job (onstart). Included right after common.smk: the rules call these at parse time.


def resources_for(stage, key, default=None):
    table = config.get("resources", {})
    value = table.get(stage, {}).get(key, table.get("default", {}).get(key))
    return default if value is None else value


# Stages whose loops shard batches over processes (salsa.training.shard_for_process);
# evaluation and data preparation run as one process on one device.
DATA_PARALLEL = {"base_model": "base", "sft": "sft", "reward_model": "reward", "ppo": "ppo", "dpo": "dpo"}
SINGLE_PROCESS = {"evaluate": "evaluate", "prepare_data": "data", "dpo_reference": "dpo_reference"}


def checkpointing(stage):
    """The stage's checkpoint interval, passed as a resource: params are a rerun trigger, resources are not."""
    block = config.get(stage, {}).get("params", {}) if stage in ("ppo", "dpo") else config.get(stage, {})
    return int(block.get("checkpoint_every", 0))


def accelerate_config_path(stage):
    """config/accelerate/<name>.yaml relative to the working directory (as src() does), or the user's path."""
    name = resources_for(stage, "accelerate_config", "ddp")
    if name.endswith(".yaml"):
        return name
    return os.path.relpath(os.path.join(workflow.basedir, "config", "accelerate", f"{name}.yaml"))


def launcher(stage, salsa_module=None):
    """`exec python -m salsa.launch ... -- salsa.<module>`: salsa.launch gives the job its GPU slots and rendezvous
    port on a workstation, one launcher per node for `nodes` > 1 under SLURM, and `accelerate launch` over
    gpus x nodes processes when that is more than one. `exec`: killing the job kills the stage."""
    salsa_module = salsa_module or DATA_PARALLEL.get(stage) or SINGLE_PROCESS[stage]
    # flags read from resources (no rerun trigger): checkpoint interval, trackers; a tracked run is
    # named by its output's path below results/<experiment>/
    resource_flags = " --checkpoint-every {resources.checkpoint_every}" if stage in DATA_PARALLEL else ""
    if stage in TRACKED_STAGES:
        resource_flags += f" --report-to {{resources.report_to}} --tracking-dir {shlex.quote(result('tracking'))}"
    gpus, nodes = int(resources_for(stage, "gpus", 0)), int(resources_for(stage, "nodes", 1))
    if stage not in DATA_PARALLEL and gpus > 1:
        raise ValueError(f"resources.{stage}.gpus: {stage} runs in one process; use gpus 0 or 1")
    if stage not in DATA_PARALLEL and nodes > 1:
        raise ValueError(f"resources.{stage}.nodes: {stage} runs in one process; use nodes 1")
    flags = ["--gpus", str(gpus)] + (["--nodes", str(nodes)] if nodes > 1 else [])
    if gpus * nodes > 1:
        flags += ["--accelerate-config", accelerate_config_path(stage)]
    return (f"exec python -m salsa.launch {shlex.join(flags)} --output {{output}} --attempt {{resources.attempt}}"
            f" -- salsa.{salsa_module}{resource_flags}")


# Minutes added to a derived runtime: loading and saving a 7B model, the reward model's normalisation samples.
RUNTIME_OVERHEAD_MIN = 20


def stage_steps(stage):
    """Optimiser steps (PPO: updates) a training stage runs, for runtime estimates; None for other stages."""
    if stage in ("sft", "base_model", "reward_model"):
        return config.get(stage, {}).get("steps")
    if stage in ("ppo", "dpo"):
        return config.get(stage, {}).get("params", {}).get("updates" if stage == "ppo" else "steps")
    return None


def derived_runtime(stage):
    """runtime (minutes): resources.<stage>.runtime if set, else steps x seconds_per_step x runtime_safety
    + RUNTIME_OVERHEAD_MIN when seconds_per_step is given, else None (the profile's default)."""
    own = config.get("resources", {}).get(stage, {})
    if own.get("runtime") is not None:
        return own["runtime"]
    per_step, steps = resources_for(stage, "seconds_per_step"), stage_steps(stage)
    if per_step is None or not steps:
        return None
    return math.ceil(steps * per_step * resources_for(stage, "runtime_safety", 1.5) / 60) + RUNTIME_OVERHEAD_MIN


def stage_resources(stage):
    """A rule's resources: memory, time, GPUs (`gpu`, which the SLURM plugin turns into --gpus), nodes and SLURM extras.

    Each key comes from resources.<stage>, then, for a stage that asks for no GPU, resources.cpu
    (e.g. a CPU partition), then resources.default; keys set nowhere are left to the profile.
    GPU jobs ask for one node (--nodes=1) unless `nodes` says more; a multi-node job asks for
    --gpus-per-node and one task per node, and salsa.launch starts one launcher per node with srun.
    Training stages ask SLURM for `stop_signal` (--signal=TERM@300: SIGTERM to the job's steps 300 s before the limit).
    """
    gpus = int(resources_for(stage, "gpus", 0))
    nodes = int(resources_for(stage, "nodes", 1))
    cpu_block = config.get("resources", {}).get("cpu", {}) if gpus == 0 else {}

    def lookup(key):
        own = config.get("resources", {}).get(stage, {}).get(key)
        return own if own is not None else cpu_block.get(key, resources_for(stage, key))

    runtime = derived_runtime(stage)
    table = {"mem_mb": lookup("mem_mb"), "runtime": runtime if runtime is not None else lookup("runtime"),
             "gpu": gpus}
    for key in ("slurm_partition", "slurm_account", "gpu_model", "slurm_extra", "cpus_per_task"):
        table[key] = lookup(key)
    if stage in DATA_PARALLEL and lookup("stop_signal"):
        # the training stages checkpoint on this signal (salsa.training.stop_if_preempted); added to the stage's own
        # slurm_extra, so a --qos there or a multi-node job's --gpus-per-node below does not drop it
        table["slurm_extra"] = " ".join(filter(None, [table.get("slurm_extra"), f"--signal={lookup('stop_signal')}"]))
    if gpus > 0:
        table["nodes"] = nodes
    if nodes > 1:
        # the plugin's --gpus=N would spread N GPUs over the nodes in any split: ask per node instead, and run
        # the job's command on the first node without the jobstep's srun (`mpi`), one task per node
        model = f"{table.pop('gpu_model')}:" if table.get("gpu_model") else ""
        table["slurm_extra"] = " ".join(filter(None, [table.get("slurm_extra"), f"--gpus-per-node={model}{gpus}"]))
        table.update(gpu=0, mpi="srun", tasks=nodes)
    if stage in DATA_PARALLEL:
        table["checkpoint_every"] = checkpointing(stage)
    if stage in TRACKED_STAGES:
        table["report_to"] = trackers_resource()
    table = {k: v for k, v in table.items() if v is not None}
    table["attempt"] = lambda wildcards, attempt: attempt   # salsa.launch: a retry after a StageError fails fast
    return table


def stop_leads_beyond_launcher_wait():
    """Training stages whose stop_signal lead is over a minute longer than their launcher's wait for the save on
    that signal (salsa.launch's STOP_GRACE_S, or the exported TORCH_ELASTIC_SHUTDOWN_TIMEOUT): the launcher kills
    a multi-process stage before the lead is used. `(stage, lead, wait)` for a warning at parse time."""
    from salsa.launch import SHUTDOWN_TIMEOUT, STOP_GRACE_S

    wait = int(os.environ.get(SHUTDOWN_TIMEOUT) or STOP_GRACE_S)
    found = []
    for stage in DATA_PARALLEL:
        lead = (resources_for(stage, "stop_signal") or "").removeprefix("TERM@")   # the schema's only form
        processes = int(resources_for(stage, "gpus", 0)) * int(resources_for(stage, "nodes", 1))
        if lead and processes > 1 and int(lead) > wait + 60:
            found.append((stage, int(lead), wait))
    return found


for _stage, _lead, _wait in stop_leads_beyond_launcher_wait() if not workflow.remote_exec else []:
    print(f"warning: resources.{_stage}.stop_signal TERM@{_lead}: the job's launcher waits only {_wait} s for the "
          f"save on that signal; export TORCH_ELASTIC_SHUTDOWN_TIMEOUT={_lead - 10} before starting Snakemake",
          file=sys.stderr)


def conda_env(stage):
    """GPU jobs get the CUDA environment (envs/salsa-gpu.yaml) under --sdm conda."""
    return "../envs/salsa-gpu.yaml" if int(resources_for(stage, "gpus", 0)) > 0 else "../envs/salsa.yaml"


# API judges (rules/evaluate.smk): checked before the first GPU or judge job of a run, judged where Snakemake runs.
def api_judged_benchmarks():
    return [b for b in enabled_benchmarks() if benchmark_setting(b, "judge") == "openai"]


def judge_preflight_plan():
    """What judge_preflight checks and prices: per API-judged benchmark its judge, endpoint, models and price."""
    plan = []
    for benchmark in api_judged_benchmarks():
        judging = benchmark_setting(benchmark, "judging", {})
        plan.append({"benchmark": benchmark, "models": len(benchmark_models(benchmark)),
                     **{k: judging.get(k) for k in ("judge_model", "base_url", "api_key_env", "max_questions",
                                                    "categories") if judging.get(k) is not None},
                     "cost": benchmark_setting(benchmark, "cost", {})})
    return plan


def judge_preflight_targets():
    """The judge_preflight job (its bill in ok.json) is a target of `rule all`, and no job's input."""
    return [result("judge_preflight", "ok.json")] if api_judged_benchmarks() else []


def needs_checked_judges(job, api_judged):
    """A job that spends GPU hours (one GPU or more, or several nodes) or calls an API judge (of `api_judged`)."""
    resources = dict(job.resources)
    if int(resources.get("gpu") or 0) > 0 or int(resources.get("nodes") or 1) > 1:
        return True
    return job.rule.name == "evaluate_judge" and getattr(job.wildcards, "benchmark", None) in api_judged


def check_judges_before_any_job(dag):
    """onstart (Snakefile): with an API judge configured and judged locally, when a pending job needs GPUs or the API,
    every judge answers a one-token request before Snakemake starts any job; else one line per problem and exit 1.
    Not a file edge to those jobs: a rerun job upstream of an ancient() input makes Snakemake 9.27 skip every other
    rerun reason downstream of it in that invocation (docs/judging.md), and an added API judge would add an input
    to finished GPU jobs. Judges sent to the cluster (resources.bench_judge.local false) are checked there, by the
    judge_preflight job run as a target of its own first: see require_checked_judges_on_record."""
    plan = judge_preflight_plan()
    if not plan:
        return
    api_judged = {entry["benchmark"] for entry in plan}
    pending = sorted({job.rule.name for job in dag.needrun_jobs() if needs_checked_judges(job, api_judged)})
    if not pending:
        return
    if not judge_runs_locally() and not judges_answer_here():
        require_checked_judges_on_record(plan, pending)
        return
    try:
        from salsa.artifacts import run_main
        from salsa.judges import preflight
    except ImportError as err:
        sys.exit(f"error: checking the API judges before {', '.join(pending)} needs the judge extra in the Python "
                 f"that runs Snakemake (pip install -e '.[judge]'): {err}")
    print(f"judge check before {', '.join(pending)}:", flush=True)
    if run_main(preflight.main, ["--plan", json.dumps(plan)]):
        sys.exit(1)


def require_checked_judges_on_record(plan, pending):
    """Judges on the cluster cannot be asked from here: the judge_preflight job must have answered there for this very
    plan (its ok.json records both) before a run that holds GPU or API jobs starts; else one line and exit 1."""
    marker = result("judge_preflight", "ok.json")
    try:
        with open(marker) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        state = "does not exist" if not os.path.exists(marker) else "is not a JSON object"
    elif "plan" not in record:
        state = "records no judges (an older run)"
    elif record["plan"] != json.loads(json.dumps(plan)):
        state = "checks other judges"
    elif record.get("checked_on") != "cluster":
        state = "was checked on the machine that runs Snakemake, not on the cluster"
    else:
        print(f"judge check before {', '.join(pending)}: answered on the cluster ({marker})", flush=True)
        return
    why = ("resources.bench_judge.local: false" if judges_local_setting() is False
           else "a judge that loads a model or asks for GPUs sends every judge there; local: true keeps them here")
    # --forcerun: with `--rerun-triggers mtime` or lost .snakemake metadata the target alone may find nothing to do
    forced = "" if state == "does not exist" else " --forcerun judge_preflight"
    sys.exit(f"error: the API judges run on the cluster ({why}) and {marker} {state}: run the same snakemake "
             f"command with the target judge_preflight{forced} first; then {', '.join(pending)} can start")


def judges_answer_here():
    """Under the local executor every job, the judges' too, runs on this machine, so onstart asks the judges itself
    even when a judge that loads a model keeps them off a login node; `local: false` still sends them elsewhere."""
    return workflow.local_exec and judges_local_setting() is not False


def judges_local_setting():
    """resources.bench_judge.local as the config says it: True, False, or None (unset)."""
    return config.get("resources", {}).get("bench_judge", {}).get("local")


def judge_runs_locally():
    """API judges run where Snakemake runs (a login node has the key and the network); resources.bench_judge.local
    false sends them to the cluster. Judges that load a model (reward, local) or ask for GPUs go to the cluster
    unless `local: true`: a login node is no place for a 7B forward pass. (One rule, so one place for all.)"""
    if judges_local_setting() is not None:
        return bool(judges_local_setting())
    light = all(benchmark_setting(b, "judge") in ("openai", "gold") for b in enabled_benchmarks())
    return light and int(resources_for("bench_judge", "gpus", 0)) == 0


def api_requests(benchmark):
    """Requests in flight of one judge job: its concurrency (default 8). Snakemake's global `api_requests`
    resource (profiles: resources: api_requests: N) caps the sum over every judge job running at once."""
    if benchmark_setting(benchmark, "judge") != "openai":
        return 0
    return int(benchmark_setting(benchmark, "judging", {}).get("concurrency", 8))
