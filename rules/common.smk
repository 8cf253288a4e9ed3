# Path helpers and config lookups shared by the rules. Rules only wire.
import json
import math
import os
import shlex
import sys

from salsa.model_specs import hub_spec, is_gguf

# Jobs run `python -m salsa.<stage>`: make that the interpreter running Snakemake
# (e.g. .venv/bin/python) unless a conda env (--sdm conda) is activated on top.
os.environ.update(PATH=os.pathsep.join([os.path.dirname(sys.executable), os.getenv("PATH", "")]))
# The checkout, for the conda environments' post-deploy scripts (envs/*.post-deploy.sh run from a copy in
# .snakemake/conda/, so they cannot find it themselves).
os.environ.update(SALSA_REPO=workflow.basedir)

EXPERIMENT = config["experiment"]
RESULTS = f"results/{EXPERIMENT}"
THREADS = config.get("threads", 1)
CLI_EXCLUDED = {"seeds", "extra", "methods", "params", "sweep", "init", "reference", "normalize_policy",
                "data_subsets", "pair", "checkpoint_every", "enabled"}  # checkpoint_every: a resource (checkpointing())
# Outer replicates (config `replicates: [1, 2]`): replicate r redraws the SFT pair and the reward model,
# and its models are rep<r>/sft/seed1, rep<r>/soup/uniform, rep<r>/ppo/<method>/seed<N> under results/<exp>/rep<r>/.
# Without the key there is one replicate and ids carry no prefix. Data and base model are shared.
REPLICATES = [int(r) for r in config.get("replicates") or []]
REPLICATE_SEED_STRIDE = 1000  # replicate r trains SFT seed s with seed s + 1000 (r - 1): replicate 1 is the plain run

wildcard_constraints:
    sft="[A-Za-z0-9_.-]+",
    soup="[A-Za-z0-9_.-]+",
    method="[A-Za-z0-9_.-]+",
    seed=r"\d+",
    model=r"(rep\d+/)?(sft/[A-Za-z0-9_.-]+|soup/[A-Za-z0-9_.-]+|(ppo|dpo)/[A-Za-z0-9_.-]+/seed\d+)",
    rp=r"(rep\d+/)?",
    benchmark="[a-z0-9_.]+",


def result(*parts):
    return "/".join([RESULTS, *map(str, parts)])


def src(*modules):
    """Stage sources as inputs: editing a module reruns the stages that import it. Relative to the
    working directory, so moving the checkout (with its results/) reruns nothing."""
    return [os.path.relpath(f"{os.path.join(workflow.basedir, 'src', 'salsa', *m.split('.'))}.py") for m in modules]


def cli(params, skip=()):
    """A config block as command-line flags: {'kl_coef': 0.1} -> '--kl-coef 0.1'."""
    flags = []
    for key, value in params.items():
        if key in CLI_EXCLUDED or key in skip:
            continue
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        elif value is None:
            flags += [flag, "none"]
        else:
            flags += [flag, str(value).lower() if isinstance(value, bool) else str(value)]
    return shlex.join(flags)


# Stages that log live curves when `report_to` is set. The trackers travel as a resource, not a
# param: params are a rerun trigger, resources are not, so switching tracking on reruns nothing.
TRACKED_STAGES = {"base_model", "sft", "reward_model", "ppo"}


def trackers_resource():
    return ",".join(config.get("report_to", [])) or "none"


# --- models ------------------------------------------------------------------
def sft_names():
    return [f"seed{s}" for s in config["sft"]["seeds"]] + list(config["sft"].get("extra", {}))


def sft_settings(name, rep=None):
    """The sft block, overridden by an `extra` entry; the seed comes from the name or the entry.

    `data_subsets` pairs each seed with its data (e.g. [half1, half2]: disjoint halves); replicate r
    offsets the training seed and redraws the subset split (subset_seed + r - 1)."""
    block = dict(config["sft"])
    if name.startswith("seed") and name[4:].isdigit():
        block["seed"] = int(name[4:])
        subsets = config["sft"].get("data_subsets") or []
        if subsets:
            if len(subsets) != len(config["sft"]["seeds"]):
                raise ValueError(f"sft.data_subsets: {len(subsets)} entries for {len(config['sft']['seeds'])} seeds")
            block["data_subset"] = subsets[config["sft"]["seeds"].index(block["seed"])]
    else:
        block.update(config["sft"].get("extra", {})[name])
    if rep is not None:
        block["seed"] += REPLICATE_SEED_STRIDE * (rep - 1)
        block["subset_seed"] = block.get("subset_seed", 0) + rep - 1
    return block


def soup_settings(name):
    spec = config.get("soups", {}).get(name, {})
    ingredients = spec.get("ingredients") or [f"sft/seed{s}" for s in config["sft"]["seeds"]]
    weights = spec.get("weights") or []
    return ingredients, weights


def split_replicate(ref):
    """'rep2/sft/seed1' -> (2, 'sft/seed1'); an id without the prefix -> (None, id)."""
    head, _, rest = ref.partition("/")
    if rest and head.startswith("rep") and head[3:].isdigit():
        return int(head[3:]), rest
    return None, ref


def in_replicate(ref, rep):
    """A config reference (sft/seed1) as one replicate's model (rep2/sft/seed1); base is shared."""
    return ref if rep is None or ref == "base" else f"rep{rep}/{ref}"


def replicate_numbers():
    return REPLICATES or [None]


def wildcard_replicate(rp):
    """The {rp} wildcard ('' or 'rep2/') as a replicate number."""
    return int(rp[3:-1]) if rp else None


def model_dir(ref):
    """[rep<r>/]base, sft/<name>, soup/<name>, ppo/<method>/seed<N> -> the rule output that holds the model."""
    rep, ref = split_replicate(ref)
    kind, _, name = ref.partition("/")
    if kind == "base":
        return result("base_model")
    if kind in ("sft", "soup", "ppo", "dpo"):
        return result(*([f"rep{rep}"] if rep is not None else []), kind, name)
    raise ValueError(f"unknown model reference {ref!r}")


def model_path(ref):
    """The loadable model directory (a PPO or DPO run keeps its policy in model/; base may be a Hub id)."""
    if split_replicate(ref)[1] == "base":
        return base_model_path()
    trained = split_replicate(ref)[1].startswith(("ppo/", "dpo/"))
    return os.path.join(model_dir(ref), "model") if trained else model_dir(ref)


def base_model_path():
    """Where SFT starts: the tiny Llama trained here (or a GGUF model dequantised there), or the named
    model, as MODEL@REVISION when base_model.revision pins it (every stage loads that commit)."""
    model = config["base_model"].get("model") or ""
    return result("base_model") if not model or is_gguf(model) else pinned_base_model()


def pinned_base_model():
    return hub_spec(config["base_model"]["model"], config["base_model"].get("revision") or "")


# --- data ----------------------------------------------------------------------
def data_source():
    return config["data"].get("source", "embedded")


def data_args():
    """Flags of `python -m salsa.data`: the embedded task's, or the `hub` block's for --source hub."""
    if data_source() == "hub":
        hub = dict(config["data"].get("hub", {}))
        if "tokenizer" not in hub and config["base_model"].get("model"):
            hub["tokenizer"] = pinned_base_model()  # count lengths in the model's own tokens
        return f"--source hub {cli({'seed': config['data'].get('seed', 0), **hub})}"
    return cli(config["data"], skip={"source", "hub"})



# --- PPO and DPO methods -------------------------------------------------------
def expand_methods(block):
    """A stage block's methods, `sweep` entries expanded: salsa + {kl_coef: [0.1]} -> salsa-kl_coef0.1.
    Each keeps its own keys (init, reference, reward) and the block's params under its own."""
    methods = {}
    for name, spec in block.get("methods", {}).items():
        base = {**{k: v for k, v in spec.items() if k not in ("params", "sweep")},
                "params": {**block.get("params", {}), **spec.get("params", {})}}
        sweep = spec.get("sweep", {})
        if not sweep:
            methods[name] = base
        for key, values in sweep.items():
            for value in values:
                methods[f"{name}-{key}{value}"] = {**base, "params": {**base["params"], key: value}}
    return methods


def ppo_methods():
    """The methods, plus each ppo.kl_arms entry: the method again at another kl_coef (ppo-kl_coef0.02)."""
    from salsa.config_check import kl_arm_names

    methods = expand_methods(config["ppo"])
    arms = {arm: {**methods[base], "params": {**methods[base]["params"], "kl_coef": value}}
            for arm, (base, value) in kl_arm_names(config["ppo"]).items()}
    return {**methods, **arms}


PPO_METHODS = ppo_methods()
DPO_METHODS = expand_methods(config.get("dpo", {}))


def ppo_run_ids():
    return [in_replicate(f"ppo/{m}/seed{s}", r)
            for r in replicate_numbers() for m in PPO_METHODS for s in config["ppo"]["seeds"]]


def dpo_reference_precision():
    """The reference cache is computed as the DPO policy computes: loaded in `dtype`, under its autocast, in
    fp32 weights when the policy trains every weight in fp32, else (LoRA base, DeepSpeed) in `dtype`."""
    params = config.get("dpo", {}).get("params", {})
    dtype = params.get("dtype", "float32")
    keeps_dtype = params.get("lora_r", 0) > 0 or "deepspeed" in str(resources_for("dpo", "accelerate_config", ""))
    return {"dtype": dtype, "mixed_precision": params.get("mixed_precision", "no"),
            "weights_dtype": dtype if keeps_dtype else "float32"}


def dpo_run_ids():
    return [f"dpo/{m}/seed{s}" for m in DPO_METHODS for s in config.get("dpo", {}).get("seeds", [])]


def evaluated_models():
    soups = [f"soup/{name}" for name in config.get("soups", {"uniform": {}})]
    return [in_replicate(ref, r) for r in replicate_numbers()
            for ref in [f"sft/{name}" for name in sft_names()] + soups
            ] + ppo_run_ids() + dpo_run_ids()


def model_reference(model):
    """The KL reference a model was trained against (None for SFT models and soups), in its replicate."""
    rep, model = split_replicate(model)
    parts = model.split("/")
    methods = {"ppo": PPO_METHODS, "dpo": DPO_METHODS}.get(parts[0])
    return in_replicate(methods[parts[1]]["reference"], rep) if methods else None


def reward_dir(ref="reward_model", rep=None):
    """reward_model (the default, one per replicate), reward/<name> (a WARM replica) or reward_soup/<name>
    -> its directory. WARM replicas and reward soups, like DPO runs, sit outside the replicate level."""
    kind, _, name = ref.partition("/")
    if ref == "reward_model":
        return result(*([f"rep{rep}"] if rep is not None else []), "reward_model")
    if kind in ("reward", "reward_soup") and name:
        return result(kind, name)
    raise ValueError(f"unknown reward model {ref!r}")


def reward_model_ids():
    """Every reward model of the run as a path under results/<experiment>/ (the tables report each one)."""
    ids = [reward_dir("reward_model", r) for r in replicate_numbers()]
    ids += [reward_dir(f"reward/{name}") for name in config.get("reward_models", {})]
    ids += [reward_dir(f"reward_soup/{name}") for name in config.get("reward_soups", {})]
    return [os.path.relpath(path, RESULTS) for path in ids]


def reward_settings(name):
    return {**config["reward_model"], **config.get("reward_models", {})[name]}


def reward_probe_head(rep=None):
    """The shared linear probe a reward model starts from (reward_probe.enabled), as an input; else none."""
    if not config.get("reward_probe", {}).get("enabled"):
        return []
    return [result(*([f"rep{rep}"] if rep is not None else []), "reward_probe")]


def init_head_flag(rep=None):
    return "".join(f" --init-head {path}/score_head.safetensors" for path in reward_probe_head(rep))


def reward_soup_settings(name):
    spec = config.get("reward_soups", {}).get(name, {})
    default = ["reward_model", *[f"reward/{n}" for n in config.get("reward_models", {})]]
    return spec.get("ingredients") or default, spec.get("weights") or []


def reward_normalization_args(settings):
    """The flags that fix how a reward model's normalisation samples are drawn (as the reward_model rule does)."""
    ppo_sampling = {k: v for k, v in config["ppo"].get("params", {}).items() if k in ("max_new_tokens", "temperature")}
    keys = ("seed", "normalize_samples", "max_new_tokens", "temperature", "dtype")
    return cli({k: v for k, v in {**ppo_sampling, **settings}.items() if k in keys})


def first_sft(model=None):
    """The first SFT: KL yardstick and baseline; with a model, the one of that model's replicate."""
    return in_replicate(f"sft/seed{config['sft']['seeds'][0]}", split_replicate(model)[0] if model else None)


def benchmark_models(benchmark):
    """The models a benchmark answers and judges: `models` (in every replicate, or in `replicates`) and/or the
    PPO and DPO runs of `seeds`; without either, every evaluated model."""
    spec = config.get("benchmarks", {}).get(benchmark, {})
    chosen, seeds = spec.get("models"), spec.get("seeds")
    models = [in_replicate(m, r) for r in replicate_numbers() for m in chosen] if chosen else evaluated_models()
    if spec.get("replicates"):
        # a run without outer replicates is replicate 1
        models = [m for m in models if (split_replicate(m)[0] or 1) in spec["replicates"]]
    if seeds:
        models = [m for m in models if split_replicate(m)[1].startswith(("ppo/", "dpo/"))
                  and int(m.rsplit("seed", 1)[1]) in seeds]
    return models


def enabled_benchmarks():
    return [name for name, spec in config.get("benchmarks", {}).items() if spec.get("enabled", True)]


def landscape_pair():
    """The line the landscape stage walks: `landscape.pair`, or the first two seeded SFT runs."""
    return config.get("landscape", {}).get("pair") or [f"sft/seed{s}" for s in config["sft"]["seeds"][:2]]


def landscape_enabled():
    """`landscape: {enabled: false}` switches the stage off (an overlay cannot delete the embedded default's block)."""
    block = config.get("landscape")
    return block is not None and block.get("enabled", True) and len(landscape_pair()) == 2


def summary_outputs():
    outputs = [result("tables", "summary.md")]
    if landscape_enabled():
        outputs.append(result("landscape"))
    return outputs


# Benchmarks (rules/evaluate.smk)
def benchmark_setting(benchmark, key, default=None):
    return config.get("benchmarks", {}).get(benchmark, {}).get(key, default)


def benchmark_data(benchmark):
    """Embedded protocols read the prepared data; the public ones their fetched (or copied) files."""
    if benchmark.startswith("embedded_"):
        return result("data")
    return result("benchmark_data", benchmark)


def bench_stage(stage, fallback):
    """resources.<stage> when the config has one, else <fallback>'s (answers load the policy like evaluate)."""
    return stage if stage in config.get("resources", {}) else fallback


def local_judge_model(benchmark):
    """A local judge's model directory is an input: missing, the dry run says so; changed, the judge reruns."""
    model = benchmark_setting(benchmark, "judging", {}).get("judge_model")
    return [model] if benchmark_setting(benchmark, "judge") == "local" and model else []


def judge_baseline(benchmark, model=""):
    """The baseline's answers; with replicates, the baseline of the judged model's own replicate."""
    baseline = benchmark_setting(benchmark, "baseline")
    if not baseline:
        return []
    return [result("bench", benchmark, in_replicate(baseline, split_replicate(model)[0]), "answers.jsonl")]


def endpoint_spec(endpoint):
    """tables.primary / a tables.secondary entry -> metric:method:vs[:at] (salsa.preregistration)."""
    tables = config.get("tables", {})
    vs = endpoint.get("vs", tables.get("reference_method", next(iter(PPO_METHODS))))
    parts = [endpoint.get("metric", "gold_id"), endpoint.get("method", "salsa"), vs, endpoint.get("at", "")]
    return ":".join(parts).rstrip(":")
