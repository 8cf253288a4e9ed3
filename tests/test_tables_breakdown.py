"""Tables: gold per list length and per operation, and replicate-aware model ids."""

import pytest

from salsa import tables


def test_gold_breakdown_by_length_and_operation():
    samples = [{"split": "id", "prompt": "copy 1 2", "gold": 1.0}, {"split": "id", "prompt": "sort 3 1", "gold": 0.5},
               {"split": "id", "prompt": "sort 3 1 2", "gold": 0.0}, {"split": "ood", "prompt": "copy 1 2 3 4", "gold": 0.25}]
    assert tables.gold_breakdown(samples) == {
        "gold_id_len2": 0.75, "gold_id_len3": 0.0, "gold_id_copy": 1.0, "gold_id_sort": 0.25,
        "gold_ood_len4": 0.25, "gold_ood_copy": 0.25}
    assert tables.gold_breakdown([{"split": "id", "prompt": "Write a poem", "gold": 0.3}]) == {}  # not the task


@pytest.mark.parametrize("model_id,expected", [
    ("rep2/ppo/salsa/seed1", {"kind": "ppo", "method": "salsa", "seed": "1", "replicate": "2"}),
    ("ppo/salsa/seed1", {"kind": "ppo", "method": "salsa", "seed": "1", "replicate": "1"}),
    ("rep1/sft/seed2", {"kind": "sft", "method": "seed2", "seed": "2", "replicate": "1"}),
    ("rep10/soup/uniform", {"kind": "soup", "method": "uniform", "seed": "", "replicate": "10"}),
])
def test_model_ids_carry_their_replicate(model_id, expected):
    assert tables.parse_model_id(model_id) == expected


def test_malformed_model_id_is_refused():
    from salsa.artifacts import StageError
    with pytest.raises(StageError):
        tables.parse_model_id("rep2/ppo/salsa")
