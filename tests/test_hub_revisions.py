"""Hub datasets at a pinned revision: the data stage passes each dataset's revision to `datasets.load_dataset`
(the prompts and out-of-distribution prompts inherit the revision of the dataset they come from)."""

from __future__ import annotations

import pytest

from salsa import hub_data
from salsa.artifacts import StageError


def test_load_rows_asks_the_hub_for_the_revision(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(source, split, revision=None):
        calls.append((source, split, revision))
        return datasets.Dataset.from_list([{"messages": []}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub_data.load_rows("org/chats", "train_sft", "0123abc")
    hub_data.load_rows("org/chats", "train_sft")
    assert calls == [("org/chats", "train_sft", "0123abc"), ("org/chats", "train_sft", None)]

    def failing(source, split, revision=None):
        raise FileNotFoundError(f"Revision '{revision}' not found for {source}")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(StageError, match=r"^org/chats@bad\[train_sft\]: cannot load from the Hub \(Revision 'bad'"):
        hub_data.load_rows("org/chats", "train_sft", "bad")


def test_every_split_is_read_at_its_datasets_revision(monkeypatch):
    asked = []

    class Stop(Exception):
        pass

    def record(source, split, revision=""):
        asked.append((source, split, revision))
        if len(asked) == 6:
            raise Stop
        return hub_data.Rows([])

    monkeypatch.setattr(hub_data, "load_rows", record)
    monkeypatch.setattr(hub_data, "select", lambda rows, kind, n, seed, lengths, label, **kw: (
        [{"messages": [{"role": "user", "content": "q"}], "prompt": "q"}], {}))
    config = hub_data.HubDataConfig(out="x", sft_dataset="org/chats", prefs_dataset="org/prefs",
                                    sft_revision="c0ffee", prefs_revision="beef", length_unit="chars")
    with pytest.raises(Stop):
        hub_data.generate(config)
    assert asked == [("org/chats", "train_sft", "c0ffee"), ("org/prefs", "train_prefs", "beef"),
                     ("org/prefs", "test_prefs", "beef"), ("org/prefs", "train_gen", "beef"),
                     ("org/prefs", "test_gen", "beef"), ("org/chats", "test_sft", "c0ffee")]


# --- models and `salsa pin` ------------------------------------------------------
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from salsa import pin  # noqa: E402
from salsa.model_specs import hub_spec, split_revision  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def test_a_revision_travels_as_model_at_revision_and_is_split_back():
    assert hub_spec("org/name", "abc") == "org/name@abc" and hub_spec("org/name") == "org/name"
    assert hub_spec("org/name::m.gguf", "abc") == "org/name@abc::m.gguf"
    assert split_revision("org/name@abc") == ("org/name", "abc")
    assert split_revision("org/name") == ("org/name", None)
    with pytest.raises(StageError, match="ORG/NAME@REVISION"):
        split_revision("org/name@")


def hub_cache(root: Path, repo_id: str, repo_type: str, files: dict[str, Path | str], commit: str = COMMIT) -> Path:
    """A repo in the HF cache's own layout (blobs, snapshots/<commit> links, refs/main), as a download leaves it."""
    repo = root / f"{repo_type}s--{repo_id.replace('/', '--')}"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        blob = blobs / f"blob-{name.replace('/', '-')}"
        if isinstance(source, Path):
            shutil.copyfile(source, blob)
        else:
            blob.write_text(source)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).symlink_to(os.path.relpath(blob, (snapshot / name).parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo


def offline(cache: Path) -> dict:
    return {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}


def test_a_pinned_hub_model_loads_offline_at_its_commit_and_the_base_stage_records_it(tiny, tmp_path):
    cache = tmp_path / "hub"
    hub_cache(cache, "org/tiny", "model", {p.name: p for p in tiny["base"].iterdir() if p.is_file()})
    load = ("import sys; from salsa.artifacts import run_main; from salsa.modeling import load_causal_lm, "
            "load_tokenizer\ndef main(argv):\n    load_tokenizer(argv[0]); m = load_causal_lm(argv[0])\n"
            "    print('params', sum(p.numel() for p in m.parameters()))\nsys.exit(run_main(main, sys.argv[1:]))")
    ok = subprocess.run([sys.executable, "-c", load, f"org/tiny@{COMMIT}"], capture_output=True, text=True,
                        env=offline(cache), timeout=120)
    assert ok.returncode == 0 and "params" in ok.stdout, ok.stderr[-2000:]
    wrong = subprocess.run([sys.executable, "-c", load, f"org/tiny@{OTHER}"], capture_output=True, text=True,
                           env=offline(cache), timeout=120)
    # the commit is really asked for: one that is not cached is refused in one line, not served from main
    assert wrong.returncode == 1 and re.fullmatch(rf"error: org/tiny@{OTHER}: cannot load tokenizer \(.*\)\n",
                                                  wrong.stderr), wrong.stderr[-2000:]

    for revision, expected in (("", COMMIT), (COMMIT, COMMIT)):
        out = tmp_path / f"base{revision[:4]}"
        proc = subprocess.run([sys.executable, "-m", "salsa.base", "--model", "org/tiny", "--revision", revision,
                               "--data", str(tiny["data"] / "pretrain"), "--out", str(out)], capture_output=True,
                              text=True, env=offline(cache), timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        pointer = yaml.safe_load((out / "base_model.json").read_text())
        assert pointer == {"model": "org/tiny", "revision": revision or None, "commit": expected}
    proc = subprocess.run([sys.executable, "-m", "salsa.base", "--model", "org/tiny", "--revision", OTHER,
                           "--data", str(tiny["data"] / "pretrain"), "--out", str(tmp_path / "bad")],
                          capture_output=True, text=True, env=offline(cache), timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: org/tiny@{OTHER}: not in the HF cache"), (
        proc.stderr[-2000:])
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "bad").exists()


def write(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_salsa_pin_reports_each_hub_input_against_the_cache(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    hub_cache(cache, "org/base", "model", {"config.json": "{}"})
    hub_cache(cache, "org/chats", "dataset", {"data/train.parquet": "x"})
    hub_cache(cache, "org/prefs", "dataset", {"data/train.parquet": "x"}, commit=OTHER)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    pinned = {"base_model": {"model": "org/base", "revision": COMMIT},
              "data": {"source": "hub", "hub": {"sft_dataset": "org/chats", "sft_revision": COMMIT,
                                                "prefs_dataset": "org/prefs", "prefs_revision": OTHER,
                                                "ood_dataset": "org/chats"}}}
    assert pin.main([write(tmp_path / "a.yaml", pinned)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # the out-of-distribution prompts come from org/chats at its revision: listed once
    assert lines == [f"base_model.model: org/base @ {COMMIT}; cached: {COMMIT}",
                     f"data.hub.sft_dataset: org/chats @ {COMMIT}; cached: {COMMIT}",
                     f"data.hub.prefs_dataset: org/prefs @ {OTHER}; cached: {OTHER}"]

    # unpinned: the key to set, with the commit the cache holds; pinned to a commit not cached: prefetch
    unpinned = write(tmp_path / "b.yaml", {"base_model": {"revision": ""},
                                           "data": {"hub": {"prefs_revision": COMMIT}}})
    assert pin.main([write(tmp_path / "a.yaml", pinned), unpinned]) == 1
    out = capsys.readouterr().out
    assert f"base_model.model: org/base @ (unpinned: main); cached: {COMMIT}  -> set base_model.revision: {COMMIT}" in out
    assert f"data.hub.prefs_dataset: org/prefs @ {COMMIT}; cached: no  -> not in the HF cache" in out
    with pytest.raises(StageError, match=r"nowhere\.yaml: cannot read"):
        pin.merged_config([str(tmp_path / "nowhere.yaml")])


@pytest.mark.parametrize("name", ["llama2-7b", "mistral-7b", "gemma-2b"])
def test_every_hub_input_of_the_gpu_overlays_is_pinned_to_a_commit(name):
    config = pin.merged_config([str(REPO / "config" / "config.yaml"), str(REPO / "config" / "experiments" /
                                                                          f"{name}.yaml")])
    inputs = pin.hub_inputs(config)
    assert {i.repo_id for i in inputs} == {config["base_model"]["model"], "HuggingFaceH4/ultrachat_200k",
                                           "HuggingFaceH4/ultrafeedback_binarized"}
    for item in inputs:
        assert re.fullmatch(r"[0-9a-f]{40}", item.revision), (item.key, item.revision)
