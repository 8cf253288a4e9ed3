"""Paper and real-model overlays: schema validation, and dry runs under each profile (no GPU, no cluster).

The SLURM profile is dry-run with the real executor plugin: `snakemake -n --executor slurm`
builds the DAG and every job's resources without calling sbatch, sinfo or sacct.
"""

import copy
import dataclasses
import os
import re
import subprocess

import pytest
import yaml

from test_workflow import DEFAULT, REPO, SNAKEMAKE, scheduled_rules, snakemake

EXPERIMENTS = REPO / "config" / "experiments"
PAPER = ["llama2-7b", "mistral-7b", "gemma-2b"]
OVERLAYS = {name: [EXPERIMENTS / f"{name}.yaml"] for name in [*PAPER, "smollm2-135m"]}
OVERLAYS["smollm2-gpu"] = [EXPERIMENTS / "smollm2-135m.yaml", EXPERIMENTS / "smollm2-gpu.yaml"]
PROFILES = {"slurm": REPO / "profiles" / "slurm", "local-gpu": REPO / "profiles" / "local-gpu"}


def merged(*overlays):
    """Snakemake's --configfile semantics: later files update earlier ones, nested dicts key by key."""
    def update(base, extra):
        for key, value in extra.items():
            base[key] = update(base.get(key, {}), value) if isinstance(value, dict) and isinstance(
                base.get(key), dict) else value
        return base
    config = yaml.safe_load(open(DEFAULT))
    for path in overlays:
        config = update(config, yaml.safe_load(open(path)))
    return config


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_validates_against_the_schema(name):
    from snakemake.utils import validate
    config = merged(*OVERLAYS[name])
    validate(copy.deepcopy(config), str(REPO / "config" / "schema.yaml"))
    assert config["experiment"] == name


@pytest.mark.parametrize("name", PAPER)
def test_paper_overlays_name_the_papers_models_data_and_benchmarks(name):
    config = merged(*OVERLAYS[name])
    assert config["data"]["source"] == "hub"
    hub = config["data"]["hub"]
    assert (hub["sft_dataset"], hub["sft_split"]) == ("HuggingFaceH4/ultrachat_200k", "train_sft")
    assert hub["prefs_dataset"] == "HuggingFaceH4/ultrafeedback_binarized"
    assert (hub["prefs_train_split"], hub["prefs_eval_split"], hub["ppo_split"], hub["eval_id_split"]) == (
        "train_prefs", "test_prefs", "train_gen", "test_gen")
    assert config["base_model"]["model"] in {"meta-llama/Llama-2-7b-hf", "mistralai/Mistral-7B-v0.1",
                                             "google/gemma-2b"}
    enabled = {b for b, spec in config["benchmarks"].items() if spec.get("enabled", True)}
    assert enabled == {"mt_bench", "arena_hard_v0.1"}
    assert all(config["benchmarks"][b]["judge"] == "openai" for b in enabled)
    assert config["ppo"]["methods"]["salsa"] == {"init": "soup/uniform", "reference": "soup/uniform"}
    assert config["sft"]["dtype"] == "bfloat16" and config["resources"]["sft"]["gpus"] > 1


def test_hub_block_of_the_schema_lists_only_real_flags():
    from salsa.hub_data import HubDataConfig
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    hub = set(schema["properties"]["data"]["properties"]["hub"]["properties"])
    assert hub <= {f.name for f in dataclasses.fields(HubDataConfig)}


@pytest.mark.parametrize("name", ["ddp", "deepspeed-zero3", "fsdp"])
def test_accelerate_configs_parse(name):
    config = yaml.safe_load((REPO / "config" / "accelerate" / f"{name}.yaml").read_text())
    assert config["distributed_type"] == {"ddp": "MULTI_GPU", "deepspeed-zero3": "DEEPSPEED", "fsdp": "FSDP"}[name]


def jobs(output: str) -> dict[str, list[tuple[str, str]]]:
    """rule -> [(resources line, shell command)] from `snakemake -n -p` output."""
    found: dict[str, list] = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\nrule |\nrule )", output):
        rule = re.search(r"^rule (\w+):", block, re.M)
        if rule:
            resources = re.search(r"resources: (.*)", block)
            shell = (re.search(r"Shell command: (.*)", block)
                     or re.search(r"^\s+((?:exec )?(?:python -m|accelerate) .*)$", block, re.M))
            found.setdefault(rule.group(1), []).append((resources.group(1) if resources else "",
                                                         shell.group(1) if shell else ""))
    return found


# The user's own cluster file: partitions and account from config, CPU-only stages on a CPU partition.
MY_CLUSTER = """\
resources:
  default: {slurm_partition: gpu, slurm_account: myproject}
  cpu: {slurm_partition: cpu}
"""


def dry_run(tmp_path, profile, *configfiles, check=True):
    """`snakemake -n -p` through a profile, with the user's cluster file (MY_CLUSTER) after the configs, offline."""
    my_cluster = tmp_path / "my-cluster.yaml"
    my_cluster.write_text(MY_CLUSTER)
    # a workstation declares how many GPUs it has; fewer than a job asks for would cap the job's count
    machine = ["--resources", "gpu=8"] if profile == "local-gpu" else []
    # without the helper's --cores 2: the profile's `cores` is what a user's dry run counts
    command = [arg for arg in SNAKEMAKE if arg not in ("--cores", "2")]
    proc = subprocess.run([*command, "-d", str(tmp_path), "-n", "-p", "--profile", str(PROFILES[profile]), *machine,
                           "--configfile", DEFAULT, *map(str, configfiles), str(my_cluster)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", OVERLAYS)
def test_dry_run_under_each_profile(name, profile, tmp_path):
    proc = dry_run(tmp_path, profile, *OVERLAYS[name])
    rules = scheduled_rules(proc.stdout)
    config = merged(*OVERLAYS[name])
    assert rules["sft"] == len(config["sft"]["seeds"]) and rules["soup"] == 1 and rules["tables"] == 1
    by_rule = jobs(proc.stdout + proc.stderr)
    threads = min(config.get("threads", 1), yaml.safe_load(open(PROFILES[profile] / "config.yaml"))["cores"])
    for rule, stage in (("sft", "sft"), ("reward_model", "reward_model"), ("ppo", "ppo"), ("evaluate", "evaluate"),
                        ("soup", "soup"), ("prepare_data", "prepare_data"), ("tables", "tables")):
        table = config.get("resources", {})
        gpus = table.get(stage, {}).get("gpus", table.get("default", {}).get("gpus", 0))
        resources, shell = by_rule[rule][0]
        assert f"gpu={gpus}" in resources, (rule, resources)
        if gpus > 1:
            accelerate = config["resources"][stage]["accelerate_config"]
            # salsa.launch starts `accelerate launch` over gpus processes; the config path is relative to the
            # working directory, so a moved checkout changes no job command
            path = re.search(r"--accelerate-config (\S+)", shell).group(1)
            assert shell.startswith(f"exec python -m salsa.launch --gpus {gpus} --accelerate-config"), shell
            assert not path.startswith("/") and (tmp_path / path).resolve() == (
                REPO / "config" / "accelerate" / f"{accelerate}.yaml").resolve(), path
        else:
            assert shell.startswith("exec python -m salsa."), shell
        # the dry run shows the threads a job gets (not the one core a dry run counts by default)
        if "--threads" in shell:
            assert f"--threads {threads} " in shell, (rule, shell)
        # resources.<stage>, then resources.cpu for a stage without GPUs, then resources.default
        partition = "gpu" if gpus > 0 else "cpu"
        assert f"slurm_partition={partition}" in resources and "slurm_account=myproject" in resources, (
            rule, resources)


def test_gpu_jobs_load_the_pinned_base_model_and_a_reward_soup_asks_one_gpu(tmp_path):
    """Every model stage gets MODEL@REVISION; WARM's reward soup (one process) must not hold the reward
    model's eight GPUs, while its replicas train on them."""
    warm = tmp_path / "warm.yaml"
    warm.write_text("reward_models: {seed2: {seed: 2}}\n"
                    "reward_soups: {uniform: {ingredients: [reward_model, reward/seed2]}}\n"
                    "ppo: {methods: {warm_salsa: {init: soup/uniform, reference: soup/uniform, "
                    "reward: reward_soup/uniform}}}\n")
    proc = dry_run(tmp_path, "slurm", EXPERIMENTS / "llama2-7b.yaml", warm)
    by_rule = jobs(proc.stdout + proc.stderr)
    pinned = "meta-llama/Llama-2-7b-hf@01c7f73d771dfac7d292323805ebc428287df4f9"
    assert all(f"--model {pinned} " in shell for _, shell in by_rule["sft"]), by_rule["sft"]
    assert f"--tokenizer {pinned} " in by_rule["prepare_data"][0][1]
    assert "--revision 01c7f73d771dfac7d292323805ebc428287df4f9" in by_rule["base_model"][0][1]
    assert "gpu=8" in by_rule["reward_replica"][0][0]
    (soup_resources, soup_shell), = by_rule["reward_soup"]
    assert "gpu=1" in soup_resources and soup_shell.startswith("exec python -m salsa.reward_soup"), soup_resources


def test_cpu_block_cannot_ask_for_gpus(tmp_path):
    overlay = tmp_path / "cpu-gpus.yaml"
    overlay.write_text("resources:\n  cpu: {gpus: 1}\n")
    proc = snakemake(tmp_path, "-n", "--configfile", DEFAULT, str(overlay), check=False)
    assert proc.returncode != 0 and "gpus" in proc.stdout + proc.stderr


def test_more_than_one_gpu_for_a_single_process_stage_is_refused(tmp_path):
    overlay = tmp_path / "eval8.yaml"
    overlay.write_text("resources:\n  evaluate: {gpus: 8}\n")
    proc = snakemake(tmp_path, "-n", "--configfile", DEFAULT, str(overlay), check=False)
    assert proc.returncode != 0 and "resources.evaluate.gpus" in proc.stdout + proc.stderr
