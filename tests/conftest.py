"""Shared fixtures: a tiny but real pipeline (data, base, two SFTs, soup, reward model)."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_BENCHMARKS = REPO.parent / "shared" / "benchmarks"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_DATA = ["--num-symbols", "6", "--min-len", "2", "--max-len", "3", "--ood-min-len", "4", "--ood-max-len", "4",
             "--n-pretrain", "200", "--n-sft", "200", "--n-prefs-train", "200", "--n-prefs-eval", "40",
             "--n-ppo-prompts", "64", "--n-eval-id", "16", "--n-eval-ood", "16"]
TINY_MODEL = ["--hidden-size", "32", "--intermediate-size", "64", "--num-layers", "1", "--num-heads", "2"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Paths of a tiny pipeline built once per test session by the real stage CLIs."""
    from salsa import base, data, reward, sft, soup

    root = tmp_path_factory.mktemp("tiny")
    paths = {name: root / name for name in ("data", "base", "sft1", "sft2", "soup", "reward")}
    data.main(["--out", str(paths["data"]), *TINY_DATA])
    base.main(["--tokenizer", str(paths["data"] / "tokenizer"), "--data", str(paths["data"] / "pretrain"),
               "--out", str(paths["base"]), "--steps", "30", "--batch-size", "16", "--threads", "1", *TINY_MODEL])
    for seed in (1, 2):
        sft.main(["--model", str(paths["base"]), "--data", str(paths["data"] / "sft"), "--out",
                  str(paths[f"sft{seed}"]), "--seed", str(seed), "--steps", "20", "--batch-size", "16",
                  "--threads", "1"])
    soup.main(["--inputs", str(paths["sft1"]), str(paths["sft2"]), "--out", str(paths["soup"])])
    reward.main(["--model", str(paths["sft1"]), "--data", str(paths["data"]), "--out", str(paths["reward"]),
                 "--normalize-policy", str(paths["sft1"]), "--steps", "20", "--batch-size", "16",
                 "--normalize-samples", "32", "--max-new-tokens", "6", "--threads", "1"])
    return paths
