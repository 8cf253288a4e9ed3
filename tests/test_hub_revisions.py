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
