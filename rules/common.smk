# Path helpers and config lookups shared by the rules. Rules only wire.
import os
import shlex
import sys

# Jobs run `python -m salsa.<stage>`: make that the interpreter running Snakemake
# (e.g. .venv/bin/python) unless a conda env (--sdm conda) is activated on top.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

EXPERIMENT = config["experiment"]
RESULTS = f"results/{EXPERIMENT}"
THREADS = config.get("threads", 1)
CLI_EXCLUDED = {"seeds", "extra", "methods", "params", "sweep", "init", "reference", "normalize_policy"}

wildcard_constraints:
    sft="[A-Za-z0-9_.-]+",
    soup="[A-Za-z0-9_.-]+",
    method="[A-Za-z0-9_.-]+",
    seed=r"\d+",
    model=r"sft/[A-Za-z0-9_.-]+|soup/[A-Za-z0-9_.-]+|ppo/[A-Za-z0-9_.-]+/seed\d+",
    benchmark="[a-z0-9_.]+",


def result(*parts):
    return "/".join([RESULTS, *map(str, parts)])


def src(*modules):
    """Stage sources as inputs: editing a module reruns the stages that import it."""
    return [os.path.join(workflow.basedir, "src", "salsa", m.replace(".", "/") + ".py") for m in modules]


def cli(params, skip=()):
    """A config block as command-line flags: {'kl_coef': 0.1} -> '--kl-coef 0.1'."""
    flags = []
    for key, value in params.items():
        if key in CLI_EXCLUDED or key in skip:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        elif value is None:
            flags += [flag, "none"]
        else:
            flags += [flag, str(value).lower() if isinstance(value, bool) else str(value)]
    return shlex.join(flags)


def resources_for(stage, key):
    table = config.get("resources", {})
    return table.get(stage, {}).get(key, table.get("default", {}).get(key))


# --- models ------------------------------------------------------------------
def sft_names():
    return [f"seed{s}" for s in config["sft"]["seeds"]] + list(config["sft"].get("extra", {}))


def sft_settings(name):
    """The sft block, overridden by an `extra` entry; the seed comes from the name or the entry."""
    block = dict(config["sft"])
    if name.startswith("seed") and name[4:].isdigit():
        block["seed"] = int(name[4:])
    else:
        block.update(config["sft"].get("extra", {})[name])
    return block


def soup_settings(name):
    spec = config.get("soups", {}).get(name, {})
    ingredients = spec.get("ingredients") or [f"sft/seed{s}" for s in config["sft"]["seeds"]]
    weights = spec.get("weights") or []
    return ingredients, weights


def model_dir(ref):
    """base, sft/<name>, soup/<name>, ppo/<method>/seed<N> -> the rule output that holds the model."""
    kind, _, name = ref.partition("/")
    if kind == "base":
        return result("base_model")
    if kind in ("sft", "soup", "ppo"):
        return result(kind, name)
    raise ValueError(f"unknown model reference {ref!r}")


def model_path(ref):
    """The loadable model directory (a PPO run keeps its policy in model/)."""
    return model_dir(ref) + ("/model" if ref.startswith("ppo/") else "")


def base_model_path():
    """Where SFT starts: the tiny Llama trained here, or the named pretrained model."""
    return config["base_model"].get("model") or result("base_model")


# --- PPO methods ---------------------------------------------------------------
def ppo_methods():
    """Methods from config, with `sweep` entries expanded: salsa + {kl_coef: [0.1]} -> salsa-kl_coef0.1."""
    methods = {}
    for name, spec in config["ppo"]["methods"].items():
        base = {"init": spec["init"], "reference": spec["reference"],
                "params": {**config["ppo"].get("params", {}), **spec.get("params", {})}}
        sweep = spec.get("sweep", {})
        if not sweep:
            methods[name] = base
        for key, values in sweep.items():
            for value in values:
                methods[f"{name}-{key}{value}"] = {**base, "params": {**base["params"], key: value}}
    return methods


PPO_METHODS = ppo_methods()


def ppo_run_ids():
    return [f"ppo/{m}/seed{s}" for m in PPO_METHODS for s in config["ppo"]["seeds"]]


def evaluated_models():
    soups = [f"soup/{name}" for name in config.get("soups", {"uniform": {}})]
    return [f"sft/{name}" for name in sft_names()] + soups + ppo_run_ids()


def model_reference(model):
    """The KL reference a model was trained against (None for SFT models and soups)."""
    parts = model.split("/")
    return PPO_METHODS[parts[1]]["reference"] if parts[0] == "ppo" else None


def first_sft():
    return f"sft/seed{config['sft']['seeds'][0]}"


def summary_outputs():
    return [result("tables", "summary.md")]
