"""prepare_data --source hub on fixtures in the upstream schemas of UltraChat-200k and UltraFeedback-binarized."""

import json

import pytest
from datasets import Dataset, DatasetDict, load_from_disk

from salsa import artifacts, data, hub_data
from salsa.sft import load_conversations
from salsa.reward import load_pairs


def chat(user, assistant):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def ultrachat_rows(split, n):
    rows = [{"prompt": f"{split} question {i}?", "prompt_id": f"{split}-{i}",
             "messages": chat(f"{split} question {i}?", f"answer {i}") + [
                 {"role": "user", "content": "and more?"}, {"role": "assistant", "content": f"more {i}"}]}
            for i in range(n)]
    rows.append({"prompt": "empty reply", "prompt_id": "e", "messages": chat("empty reply", "")})  # unusable
    rows.append({"prompt": "no reply", "prompt_id": "n", "messages": [{"role": "user", "content": "no reply"}]})
    rows.append({"prompt": "long", "prompt_id": "l", "messages": chat("long " * 300, "x")})  # too long
    return rows


def ultrafeedback_rows(split, n):
    rows = []
    for i in range(n):
        prompt = f"{split} prompt {i}"
        rows.append({"prompt": prompt, "prompt_id": f"{split}-{i}", "chosen": chat(prompt, f"good {i}"),
                     "rejected": chat(prompt, f"bad {i}"), "score_chosen": 8.0, "score_rejected": 3.5,
                     "messages": chat(prompt, f"good {i}")})
    rows.append({"prompt": "tie", "prompt_id": "t", "chosen": chat("tie", "same"), "rejected": chat("tie", "same"),
                 "score_chosen": 5.0, "score_rejected": 5.0, "messages": chat("tie", "same")})  # no preference
    return rows


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """UltraChat as JSON lines per split; UltraFeedback in the Hub repo's parquet layout."""
    root = tmp_path_factory.mktemp("hub")
    ultrachat = root / "ultrachat_200k"
    ultrachat.mkdir()
    for split, n in (("train_sft", 30), ("test_sft", 12)):
        (ultrachat / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ultrachat_rows(split, n)))
    feedback = root / "ultrafeedback_binarized"
    (feedback / "data").mkdir(parents=True)
    for split, n in (("train_prefs", 40), ("test_prefs", 10), ("train_gen", 20), ("test_gen", 10)):
        Dataset.from_list(ultrafeedback_rows(split, n)).to_parquet(
            str(feedback / "data" / f"{split}-00000-of-00001.parquet"))
    return {"ultrachat": ultrachat, "feedback": feedback, "root": root}


def prepare(fixtures, out, *extra):
    data.main(["--source", "hub", "--out", str(out), "--sft-dataset", str(fixtures["ultrachat"]),
               "--prefs-dataset", str(fixtures["feedback"]), "--length-unit", "chars", "--max-prompt-length", "200",
               "--max-conversation-length", "400", "--n-sft", "20", "--n-prefs-train", "30", "--n-eval-id", "6",
               "--n-eval-ood", "6", *extra])
    return out


def test_hub_source_writes_the_embedded_layout_without_task_json(fixtures, tmp_path):
    out = prepare(fixtures, tmp_path / "data")
    assert not (out / "task.json").exists()
    sizes = {name: len(load_from_disk(str(out / name))) for name in
             ("sft", "pretrain", "prefs_train", "prefs_eval", "ppo_prompts", "eval_id", "eval_ood")}
    assert sizes == {"sft": 20, "pretrain": 20, "prefs_train": 30, "prefs_eval": 10, "ppo_prompts": 21,
                     "eval_id": 6, "eval_ood": 6}
    conversations = load_conversations(str(out / "sft"))  # what the SFT stage reads
    assert all(c[-1]["role"] == "assistant" and len(c) == 4 for c in conversations)
    pairs = load_pairs(str(out / "prefs_train"))  # what the reward stage reads
    assert pairs["chosen"][0].startswith("good") and pairs["rejected"][0].startswith("bad")
    eval_ood = load_from_disk(str(out / "eval_ood"))
    assert set(eval_ood["category"]) == {"ultrachat_200k"} and eval_ood["prompt"][0].startswith("test_sft")
    assert set(load_from_disk(str(out / "eval_id"))["category"]) == {"ultrafeedback_binarized"}
    report = json.loads((out / artifacts.METADATA_FILE).read_text())["splits"]
    assert report["prefs_eval"]["dropped"]["unusable"] == 1  # the tie


def test_rows_are_filtered_and_the_subsample_depends_only_on_the_seed(fixtures, tmp_path):
    first = prepare(fixtures, tmp_path / "a", "--n-sft", "0")
    again = prepare(fixtures, tmp_path / "b", "--n-sft", "0")
    other = prepare(fixtures, tmp_path / "c", "--n-sft", "0", "--seed", "7")
    rows = list(load_from_disk(str(first / "sft"))["messages"])
    assert len(rows) == 30  # every usable row: the empty reply, the unanswered turn and the long prompt are out
    assert rows == list(load_from_disk(str(again / "sft"))["messages"])
    assert rows != list(load_from_disk(str(other / "sft"))["messages"])
    assert sorted(map(str, rows)) == sorted(map(str, load_from_disk(str(other / "sft"))["messages"]))
    report = json.loads((first / artifacts.METADATA_FILE).read_text())["splits"]["sft"]["dropped"]
    assert report == {"unusable": 2, "too_long": 1, "seen_in_training": 0}


def test_token_lengths_and_the_tokenizer_copy(fixtures, tmp_path, tiny):
    out = prepare(fixtures, tmp_path / "data", "--tokenizer", str(tiny["data"] / "tokenizer"),
                  "--length-unit", "tokens", "--max-prompt-length", "3", "--n-prefs-train", "0")
    assert (out / "tokenizer" / "tokenizer.json").exists()
    # "train_prefs prompt N" is three whitespace tokens for the word-level tokenizer; nothing is cut
    assert len(load_from_disk(str(out / "prefs_train"))) == 40
    with pytest.raises(artifacts.StageError, match="no usable rows"):
        prepare(fixtures, tmp_path / "none", "--tokenizer", str(tiny["data"] / "tokenizer"),
                "--length-unit", "tokens", "--max-prompt-length", "2")


def test_save_to_disk_directories_work_like_hub_ids(fixtures, tmp_path):
    saved = tmp_path / "feedback_saved"
    DatasetDict({split: Dataset.from_list(ultrafeedback_rows(split, 12)) for split in
                 ("train_prefs", "test_prefs", "train_gen", "test_gen")}).save_to_disk(str(saved))
    out = prepare(fixtures, tmp_path / "data", "--prefs-dataset", str(saved), "--n-prefs-train", "0")
    assert len(load_from_disk(str(out / "prefs_train"))) == 12


def test_a_malformed_row_is_a_one_line_error_naming_file_and_line(fixtures, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    rows = ultrachat_rows("train_sft", 3)
    rows[2]["messages"] = "user: hi"  # a string where upstream has a list of messages
    (broken / "train_sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (broken / "test_sft.jsonl").write_text((fixtures["ultrachat"] / "test_sft.jsonl").read_text())
    code = artifacts.run_main(data.main, ["--source", "hub", "--out", str(tmp_path / "out"), "--sft-dataset",
                                          str(broken), "--prefs-dataset", str(fixtures["feedback"]),
                                          "--length-unit", "chars", "--n-sft", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert f"{broken / 'train_sft.jsonl'}:3: `messages` must be a list" in err
    assert not (tmp_path / "out").exists()


def test_a_missing_source_names_itself(tmp_path):
    with pytest.raises(artifacts.StageError, match="no such file"):
        hub_data.load_rows(str(tmp_path / "nowhere"), "train_sft")
    with pytest.raises(artifacts.StageError, match=r"no train_sft\.jsonl"):
        hub_data.load_rows(str(tmp_path), "train_sft")


def test_offline_a_hub_id_is_read_from_its_snapshot_in_the_hf_cache(tmp_path, monkeypatch):
    """`datasets` offline reads only its own processed cache; a `huggingface-cli download` snapshot (blobs,
    snapshots/<commit>, refs/main) of the repo's parquet shards must serve the Hub id as it is."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "datasets--HuggingFaceH4--ultrafeedback_binarized"
    commit = "0123456789abcdef0123456789abcdef01234567"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit / "data"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for split, n in (("train_prefs", 5), ("test_prefs", 3)):
        blob = blobs / f"{split}-blob"
        Dataset.from_list(ultrafeedback_rows(split, n)).to_parquet(str(blob))
        (snapshot / f"{split}-00000-of-00001-5a1b2c3d4e5f6a7b.parquet").symlink_to(f"../../../blobs/{blob.name}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    rows = hub_data.load_rows("HuggingFaceH4/ultrafeedback_binarized", "test_prefs")
    assert len(rows) == 4 and rows.get(0)[0]["prompt"] == "test_prefs prompt 0"
    assert "test_prefs-00000-of-00001" in rows.get(0)[1]       # errors name the cached file
    with pytest.raises(artifacts.StageError, match="cannot load from the Hub"):   # not cached: as before
        hub_data.load_rows("HuggingFaceH4/ultrachat_200k", "train_sft")
