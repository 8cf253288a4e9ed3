"""What the config schema cannot say: checks run when the Snakefile is parsed, before any job.

config/schema.yaml types every key on its own. This module checks what one key
says about another: that every model a key names is defined, that swept values
obey the schema of the parameter they sweep, that soup weights fit their
ingredients, that batch sizes divide, and that a path which looks local exists.
Each problem is one line naming the config key; all of them are reported at once.
Only the standard library, PyYAML and jsonschema (Snakemake's own) are imported,
so parsing stays fast and the checks run without Snakemake in unit tests.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Iterator

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # the rules' sft/soup/method wildcards
HUB_ID_HINT = "to load from the Hugging Face Hub, name it by its Hub id (ORG/NAME, e.g. {}), without a leading ./ or /"
MODEL_EXAMPLE, DATASET_EXAMPLE = "HuggingFaceTB/SmolLM2-135M", "HuggingFaceH4/ultrachat_200k"
# checkpoint_every is wired through rule resources (rules/common.smk), not per run
PER_STAGE_ONLY = "checkpoint_every"
LOCAL_SUFFIXES = (".gguf", ".json", ".jsonl", ".parquet", ".arrow", ".safetensors", ".bin", ".yaml", ".yml",
                  ".csv", ".txt")


# OpenAI judge models that no longer answer (OpenAI's deprecations page, read 2026-12-01): model -> shutdown date.
# The paper's and the leaderboards' judges are among them: scores from any other judge are not comparable.
RETIRED_JUDGES = {
    "gpt-4-0314": "2026-03-26", "gpt-4-1106-preview": "2026-03-26", "gpt-4-0125-preview": "2026-03-26",
    "gpt-4-turbo-preview": "2026-03-26", "gpt-4-0613": "2026-10-23", "gpt-4": "2026-10-23",
    "gpt-3.5-turbo": "2026-10-23", "gpt-3.5-turbo-0125": "2026-10-23",
}
CURRENT_JUDGE = "gpt-4.1-2025-04-14"   # arena-hard-auto v2.0's GPT judge (config/arena-hard-v2.0.yaml)


def retired_judge_message(where: str, model: str) -> str | None:
    """One line for an OpenAI judge model that OpenAI has shut down, else None."""
    if model not in RETIRED_JUDGES:
        return None
    return (f"{where}: {model} was shut down by OpenAI on {RETIRED_JUDGES[model]} and answers every request with "
            f"HTTP 404; use a current model (e.g. {CURRENT_JUDGE}, docs/judging.md) or your own endpoint (base_url)")


class ConfigError(Exception):
    """One or more config problems, one per line."""


def seeded_sft_names(config: dict) -> list[str]:
    return [f"seed{s}" for s in config.get("sft", {}).get("seeds", [])]


def soup_names(config: dict) -> list[str]:
    soups = config.get("soups")
    return list(soups if soups is not None else {"uniform": {}})


def defined_models(config: dict) -> list[str]:
    """Every model the workflow builds: base, sft/<name>, soup/<name>."""
    sft = config.get("sft", {})
    names = seeded_sft_names(config) + list(sft.get("extra") or {})
    return ["base"] + [f"sft/{n}" for n in names] + [f"soup/{n}" for n in soup_names(config)]


def ppo_methods(config: dict) -> dict[str, dict]:
    """Method name -> merged params, sweeps expanded as rules/common.smk expands them."""
    ppo = config.get("ppo", {})
    methods = {}
    for name, spec in (ppo.get("methods") or {}).items():
        params = {**(ppo.get("params") or {}), **(spec.get("params") or {})}
        sweep = spec.get("sweep") or {}
        if not sweep:
            methods[name] = params
        for key, values in sweep.items():
            for value in values if isinstance(values, list) else []:
                methods[f"{name}-{key}{value}"] = {**params, key: value}
    return {**methods, **{arm: {**methods.get(base, {}), "kl_coef": value}
                          for arm, (base, value) in kl_arm_names(ppo).items()}}


def kl_arm_names(ppo: dict) -> dict[str, tuple[str, float]]:
    """ppo.kl_arms {ppo: [0.02]} -> {'ppo-kl_coef0.02': ('ppo', 0.02)}: the method again at another β, named as
    a sweep names it, so the tables see one family (rules/common.smk runs these beside the methods)."""
    return {f"{base}-kl_coef{value}": (base, value) for base, values in (ppo.get("kl_arms") or {}).items()
            for value in values or []}


def evaluated_models(config: dict) -> list[str]:
    seeds = config.get("ppo", {}).get("seeds", [])
    runs = [f"ppo/{m}/seed{s}" for m in ppo_methods(config) for s in seeds]
    return [m for m in defined_models(config) if m != "base"] + runs


def looks_local(spec: str) -> bool:
    """A path rather than a Hub id: ./x, ../x, /x, ~/x, a/b/c, or a file name such as x.gguf."""
    spec = spec.partition("::")[0] if "::" in spec else spec
    return (spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep in spec.replace("/", "")
            or spec.lower().endswith(LOCAL_SUFFIXES))


def _choices(names: list[str]) -> str:
    return ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")


def _schema_error(value: Any, schema: dict) -> str | None:
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.path))
    return errors[0].message if errors else None


def _check_models(config: dict) -> Iterator[str]:
    defined = defined_models(config)
    evaluated = evaluated_models(config)

    def refs(key: str, value: Any, allowed: list[str]) -> Iterator[str]:
        if isinstance(value, str) and value not in allowed:
            yield f"{key}: {value!r} is not a defined model (defined: {_choices(allowed)})"

    for arm, (base, _) in kl_arm_names(config.get("ppo", {})).items():
        if base not in (config.get("ppo", {}).get("methods") or {}):
            yield f"ppo.kl_arms.{base}: not a PPO method (arm {arm})"
    for name, spec in (config.get("ppo", {}).get("methods") or {}).items():
        for field in ("init", "reference"):
            yield from refs(f"ppo.methods.{name}.{field}", spec.get(field), defined)
    reward = config.get("reward_model", {})
    if "init" not in reward:
        yield "reward_model.init: required (the model the reward model starts from, e.g. sft/seed1)"
    for field in ("init", "normalize_policy"):
        yield from refs(f"reward_model.{field}", reward.get(field), defined)
    for name, spec in (config.get("soups") or {}).items():
        if not NAME.match(name):
            yield f"soups.{name}: a soup name may use only letters, digits, '_', '.' and '-'"
        for i, ingredient in enumerate((spec or {}).get("ingredients") or []):
            yield from refs(f"soups.{name}.ingredients[{i}]", ingredient, defined)
            if ingredient == f"soup/{name}":
                yield f"soups.{name}.ingredients[{i}]: a soup cannot contain itself"
    for name in (config.get("sft", {}).get("extra") or {}):
        if not NAME.match(name):
            yield f"sft.extra.{name}: a run name may use only letters, digits, '_', '.' and '-'"
        if re.fullmatch(r"seed\d+", name):
            yield f"sft.extra.{name}: names seed<N> belong to sft.seeds; pick another name"
    dpo_runs = [f"dpo/{m}/seed{s}" for m in ppo_methods({"ppo": config.get("dpo") or {}})
                for s in (config.get("dpo") or {}).get("seeds", [])]
    for name, spec in (config.get("benchmarks") or {}).items():
        judging = spec.get("judging") or {}
        if spec.get("enabled", True) and spec.get("judge") == "openai" and not judging.get("judge_model"):
            yield (f"benchmarks.{name}.judging.judge_model: not set; judge: openai needs the API model (e.g. "
                   f"{CURRENT_JUDGE}, docs/judging.md) or the name your endpoint (base_url) serves")
        elif spec.get("enabled", True) and spec.get("judge") == "openai" and not judging.get("base_url"):
            retired = retired_judge_message(f"benchmarks.{name}.judging.judge_model", judging.get("judge_model", ""))
            if retired:
                yield retired
        if spec.get("enabled", True):
            yield from refs(f"benchmarks.{name}.baseline", spec.get("baseline"), evaluated)
            for i, model in enumerate(spec.get("models") or []):
                yield from refs(f"benchmarks.{name}.models[{i}]", model, evaluated + dpo_runs)
            run_seeds = {int(run.rpartition("/seed")[2]) for run in [*evaluated, *dpo_runs] if "/seed" in run
                         and run.startswith(("ppo/", "dpo/"))}
            if spec.get("seeds") and not set(spec["seeds"]) & run_seeds:
                yield (f"benchmarks.{name}.seeds: {spec['seeds']} selects no PPO or DPO run (their seeds: "
                       f"{sorted(run_seeds)}); use seeds: [] for every model")
            outer = config.get("replicates") or [1]   # a run without outer replicates is replicate 1
            unknown = sorted(set(spec.get("replicates") or []) - set(outer))
            if unknown:
                yield f"benchmarks.{name}.replicates: {unknown} not among the run's replicates {outer}"
    tables = config.get("tables") or {}
    yield from refs("tables.baseline", tables.get("baseline"), evaluated)
    methods = list(ppo_methods(config))
    if tables.get("reference_method") is not None and tables["reference_method"] not in methods:
        yield (f"tables.reference_method: {tables['reference_method']!r} is not a PPO method "
               f"(methods: {_choices(methods)})")
    compared = methods + [f"dpo/{m}" for m in ppo_methods({"ppo": config.get("dpo") or {}})]
    for key in ("pairs", "contrasts"):
        for i, group in enumerate(tables.get(key) or []):
            for name in group:
                if name not in compared:
                    yield f"tables.{key}[{i}]: {name!r} is not a method (methods: {_choices(compared)})"
    yield from _check_endpoints(tables, methods, compared)


def _check_endpoints(tables: dict, methods: list[str], compared: list[str]) -> Iterator[str]:
    """tables.primary / tables.secondary name methods that run (families for matched KL)."""
    families = {re.sub(r"-[A-Za-z_]+?[-+.0-9][-+.0-9eE]*$", "", m) for m in compared}
    reference = tables.get("reference_method") or (methods[0] if methods else "")
    declared = [("tables.primary", tables.get("primary") or {})]
    declared += [(f"tables.secondary[{i}]", e) for i, e in enumerate(tables.get("secondary") or [])]
    for key, endpoint in declared:
        matched = str(endpoint.get("at", "")).startswith("matched_kl")
        for field, name in (("method", endpoint.get("method", "salsa")), ("vs", endpoint.get("vs", reference))):
            if name not in compared and not (matched and name in families):
                yield f"{key}.{field}: {name!r} is not a method (methods: {_choices(compared)})"


def _check_ppo(config: dict, schema: dict) -> Iterator[str]:
    ppo = config.get("ppo", {})
    properties = schema["definitions"]["ppo_params"]["properties"]
    for name, spec in (ppo.get("methods") or {}).items():
        if PER_STAGE_ONLY in (spec.get("params") or {}):
            yield (f"ppo.methods.{name}.params.{PER_STAGE_ONLY}: not a per-method setting; "
                   f"set ppo.params.{PER_STAGE_ONLY}")
        for key, values in (spec.get("sweep") or {}).items():
            where = f"ppo.methods.{name}.sweep.{key}"
            if key not in properties:
                yield f"{where}: not a PPO parameter (see ppo.params in config/schema.yaml)"
                continue
            if key == PER_STAGE_ONLY:
                yield f"{where}: checkpointing does not change results; set ppo.params.{PER_STAGE_ONLY}"
                continue
            for i, value in enumerate(values):
                message = _schema_error(value, properties[key])
                if message:
                    yield f"{where}[{i}]: {message}"
                elif not NAME.match(f"{name}-{key}{value}"):
                    yield f"{where}[{i}]: {value!r} makes the run name {name}-{key}{value}, not a valid name"
    gpus = (config.get("resources", {}).get("ppo") or {}).get("gpus",
                                                               (config.get("resources", {}).get("default") or {})
                                                               .get("gpus", 0))
    processes = max(1, int(gpus or 0))
    defaults = stage_defaults("ppo", "PPOConfig")
    for method, params in ppo_methods(config).items():
        batch = params.get("batch_size", defaults.get("batch_size"))
        mini = params.get("mini_batch_size", defaults.get("mini_batch_size"))
        if isinstance(batch, int) and isinstance(mini, int) and mini > 0 and batch % (mini * processes):
            per = f" x {processes} GPUs" if processes > 1 else ""
            yield (f"ppo (method {method}): batch_size {batch} is not a multiple of mini_batch_size {mini}{per}")


def _check_sft_extra(config: dict, schema: dict) -> Iterator[str]:
    sft_schema = schema["properties"]["sft"]["properties"]
    entry_schema = {"type": "object", "additionalProperties": False, "required": ["seed"],
                    "properties": {**{k: v for k, v in sft_schema.items() if k not in ("seeds", "extra")},
                                   "seed": {"type": "integer"}}}
    for name, entry in (config.get("sft", {}).get("extra") or {}).items():
        if isinstance(entry, dict) and PER_STAGE_ONLY in entry:
            yield f"sft.extra.{name}.{PER_STAGE_ONLY}: not a per-run setting; set sft.{PER_STAGE_ONLY}"
            continue
        message = _schema_error(entry, entry_schema)
        if message:
            yield f"sft.extra.{name}: {message}"


def _check_soups(config: dict) -> Iterator[str]:
    n_seeds = len(seeded_sft_names(config))
    for name, spec in (config.get("soups") or {}).items():
        spec = spec or {}
        weights = spec.get("weights") or []
        if not weights:
            continue
        n_ingredients = len(spec.get("ingredients") or []) or n_seeds
        if len(weights) != n_ingredients:
            yield f"soups.{name}.weights: {len(weights)} weights for {n_ingredients} ingredients"
        elif not all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in weights):
            yield f"soups.{name}.weights: every weight must be a finite number >= 0"
        elif not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
            yield f"soups.{name}.weights: weights sum to {sum(weights):g}; a soup's weights sum to 1"


def _check_paths(config: dict, workdir: Path) -> Iterator[str]:
    def missing(key: str, value: Any, always_local: bool = False, example: str = MODEL_EXAMPLE) -> Iterator[str]:
        if not isinstance(value, str) or not value or value.startswith("pypi:"):
            return
        path = value.partition("::")[0] if "::" in value else value
        if (always_local or looks_local(value)) and not (workdir / os.path.expanduser(path)).exists():
            hint = "" if always_local else "; " + HUB_ID_HINT.format(example)
            yield f"{key}: {value}: no such file or directory{hint}"

    base = config.get("base_model", {})
    yield from missing("base_model.model", base.get("model"))
    if base.get("revision") and (not base.get("model") or looks_local(base["model"])
                                 or base["model"].startswith("pypi:")):
        yield (f"base_model.revision: {base['revision']}: a revision pins a Hub model, and base_model.model "
               f"is {base.get('model') or 'empty (the tiny Llama trained here)'}")
    hub = config.get("data", {}).get("hub") or {}
    if config.get("data", {}).get("source") == "hub":
        for key in ("sft_dataset", "prefs_dataset", "prompts_dataset", "ood_dataset", "tokenizer"):
            yield from missing(f"data.hub.{key}", hub.get(key),
                               example=MODEL_EXAMPLE if key == "tokenizer" else DATASET_EXAMPLE)
    for name, spec in (config.get("benchmarks") or {}).items():
        if not spec.get("enabled", True):
            continue
        judging = spec.get("judging") or {}
        for key in ("judge_config", "judge_prompts", "creative_system_prompt_file"):
            yield from missing(f"benchmarks.{name}.judging.{key}", judging.get(key), always_local=True)
        if spec.get("judge") == "local":
            yield from missing(f"benchmarks.{name}.judging.judge_model", judging.get("judge_model"))
    for stage, table in (config.get("resources") or {}).items():
        accelerate = (table or {}).get("accelerate_config", "")
        if accelerate.endswith(".yaml"):
            yield from missing(f"resources.{stage}.accelerate_config", accelerate, always_local=True)


def defined_rewards(config: dict) -> list[str]:
    """reward_model, reward/<name> (WARM replicas) and reward_soup/<name>."""
    return (["reward_model"] + [f"reward/{n}" for n in (config.get("reward_models") or {})]
            + [f"reward_soup/{n}" for n in (config.get("reward_soups") or {})])


def _check_dpo_and_warm(config: dict) -> Iterator[str]:
    """DPO methods name defined models; PPO methods and reward soups name defined reward models."""
    defined, rewards = defined_models(config), defined_rewards(config)
    for name, spec in ((config.get("dpo") or {}).get("methods") or {}).items():
        for field in ("init", "reference"):
            if spec.get(field) not in defined:
                yield f"dpo.methods.{name}.{field}: {spec.get(field)!r} is not a defined model (defined: {_choices(defined)})"
    for name, spec in (config.get("ppo", {}).get("methods") or {}).items():
        if "reward" in spec and spec["reward"] not in rewards:
            yield f"ppo.methods.{name}.reward: {spec['reward']!r} is not a defined reward model (defined: {_choices(rewards)})"
    probed = (config.get("reward_probe") or {}).get("enabled")
    for name, spec in (config.get("reward_models") or {}).items():
        if "init" in (spec or {}) and spec["init"] not in defined:
            yield f"reward_models.{name}.init: {spec['init']!r} is not a defined model (defined: {_choices(defined)})"
        elif probed and "init" in (spec or {}) and spec["init"] != config["reward_model"]["init"]:
            yield (f"reward_models.{name}.init: {spec['init']!r}: with reward_probe.enabled every replica starts from "
                   f"the head probed on reward_model.init ({config['reward_model']['init']!r})")
    for name, spec in (config.get("reward_soups") or {}).items():
        for i, ingredient in enumerate((spec or {}).get("ingredients") or []):
            if ingredient not in rewards or ingredient.startswith("reward_soup/"):
                yield (f"reward_soups.{name}.ingredients[{i}]: {ingredient!r} is not reward_model or a replicas' "
                       f"reward/<name> (defined: {_choices([r for r in rewards if not r.startswith('reward_soup/')])})")


def _sharded(config: dict, stage: str) -> str | None:
    """The accelerate config a stage runs under when it shards weights (ZeRO-3 / FSDP over >1 GPU), else None."""
    table = config.get("resources") or {}
    def lookup(key):
        value = (table.get(stage) or {}).get(key)
        return value if value is not None else (table.get("default") or {}).get(key)
    name = str(lookup("accelerate_config") or "ddp")
    gpus = int(lookup("gpus") or 0) * int(lookup("nodes") or 1)
    return name if gpus > 1 and ("deepspeed" in name or "fsdp" in name) else None


def _check_backends(config: dict) -> Iterator[str]:
    """Batch geometry and what a sharded backend cannot do (salsa.distributed), refused before any job runs."""
    table = config.get("resources") or {}
    for stage in ("base_model", "sft", "reward_model"):
        block = config.get(stage) or {}
        micro, batch = int(block.get("micro_batch_size") or 0), int(block.get("batch_size") or 0)
        gpus = max(1, int((table.get(stage) or {}).get("gpus") or (table.get("default") or {}).get("gpus") or 1))
        if micro and batch and (batch % gpus or (batch // gpus) % micro):
            yield (f"{stage}.micro_batch_size {micro} must divide the per-process batch (batch_size {batch} / "
                   f"{gpus} processes)")
    for name, params in ppo_methods(config).items():
        micro, mini = int(params.get("micro_batch_size") or 0), int(params.get("mini_batch_size") or 0)
        if micro and mini and mini % micro:
            yield f"ppo (method {name}): micro_batch_size {micro} must divide mini_batch_size {mini}"
    for stage in ("base_model", "sft"):
        backend = _sharded(config, stage)
        if backend and (config.get(stage) or {}).get("lora_r", 0) > 0:
            yield (f"{stage}.lora_r: LoRA is merged on one process; resources.{stage}.accelerate_config {backend} "
                   "shards the weights (use ddp, or lora_r 0)")
    checks = (("ppo", ppo_methods(config)),
              ("dpo", {n: {**((config.get("dpo") or {}).get("params") or {}), **(m.get("params") or {})}
                       for n, m in (((config.get("dpo") or {}).get("methods")) or {}).items()}))
    for stage, methods in checks:
        backend = _sharded(config, stage)
        if not backend:
            continue
        for name, params in methods.items():
            for key in ("lora_r", "value_lora_r"):
                if params.get(key, 0) > 0:
                    yield (f"{stage} (method {name}): {key} {params[key]}: LoRA is merged on one process; "
                           f"resources.{stage}.accelerate_config {backend} shards the weights (use ddp)")
            if params.get("anchor", "none") != "none":
                yield (f"ppo (method {name}): anchor {params['anchor']} copies the policy's weights after each "
                       f"update; resources.ppo.accelerate_config {backend} shards them (use ddp)")


def problems(config: dict, schema: dict, workdir: str | Path = ".") -> list[str]:
    """Every problem of an already schema-validated config, one line each."""
    return [*_check_models(config), *_check_ppo(config, schema), *_check_sft_extra(config, schema),
            *_check_soups(config), *_check_paths(config, Path(workdir)), *_check_dpo_and_warm(config),
            *_check_backends(config)]


def check_config(config: dict, schema_file: str | Path, workdir: str | Path = ".") -> None:
    """Raise ConfigError listing every problem (called by the Snakefile after validate())."""
    import yaml

    found = problems(config, yaml.safe_load(Path(schema_file).read_text()), workdir)
    if found:
        raise ConfigError("\n".join(f"error: config: {line}" for line in found))


def stage_defaults(module: str, class_name: str) -> dict[str, Any]:
    """Literal defaults of a stage's config dataclass, read from its source (importing it would load torch)."""
    import ast

    tree = ast.parse((Path(__file__).parent / f"{module}.py").read_text())
    defaults = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                        and isinstance(item.value, ast.Call) and item.value.args):
                    try:
                        defaults[item.target.id] = ast.literal_eval(item.value.args[0])
                    except ValueError:
                        pass
    return defaults
