"""SFT data subsets: the knob that makes soup ingredients differ by their data, not only their seed."""

import json

import pytest

from salsa import sft


def test_halves_are_disjoint_and_cover_the_data():
    half1, half2 = sft.subset_indices(101, "half1", 7), sft.subset_indices(101, "half2", 7)
    assert not set(half1) & set(half2) and sorted(half1 + half2) == list(range(101))
    assert abs(len(half1) - len(half2)) <= 1
    assert half1 != list(range(50))  # a shuffle, not the first half of the file
    assert sft.subset_indices(101, "half1", 8) != half1  # the split is redrawn by subset_seed


def test_bootstrap_resamples_with_replacement():
    sample = sft.subset_indices(500, "bootstrap", 3)
    assert len(sample) == 500 and len(set(sample)) < 400  # about 63% distinct
    assert sample == sft.subset_indices(500, "bootstrap", 3) != sft.subset_indices(500, "bootstrap", 4)
    assert sft.subset_indices(5, "all", 3) == [0, 1, 2, 3, 4]


def test_unknown_subset_is_refused():
    with pytest.raises(SystemExit):
        sft.main(["--model", "m", "--data", "d", "--out", "o", "--data-subset", "halves"])


def test_sft_trains_on_its_half_only(tiny, tmp_path):
    out = tmp_path / "half"
    sft.main(["--model", str(tiny["base"]), "--data", str(tiny["data"] / "sft"), "--out", str(out),
              "--data-subset", "half2", "--subset-seed", "1", "--steps", "2", "--batch-size", "4", "--threads", "1"])
    assert json.loads((out / "train_summary.json").read_text())["examples"] == 100  # of the tiny split's 200
