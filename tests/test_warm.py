"""WARM: a reward soup is the soup stage's weighted mean of reward models, renormalised on its own."""

import json

import pytest
import torch
from safetensors.torch import load_file

from salsa import reward, reward_soup
from salsa.modeling import load_reward_model, load_tokenizer

REWARD_ARGS = ["--normalize-samples", "32", "--max-new-tokens", "6", "--threads", "1"]


@pytest.fixture(scope="module")
def replica(tiny, tmp_path_factory):
    """The tiny fixture's reward model again with another seed (the WARM ingredients)."""
    out = tmp_path_factory.mktemp("warm") / "reward_seed2"
    reward.main(["--model", str(tiny["sft1"]), "--data", str(tiny["data"]), "--out", str(out), "--seed", "2",
                 "--normalize-policy", str(tiny["sft1"]), "--steps", "20", "--batch-size", "16", *REWARD_ARGS])
    return out


def test_reward_soup_is_the_weighted_mean_of_its_ingredients_with_its_own_normalisation(tiny, replica, tmp_path):
    out = tmp_path / "reward_soup"
    reward_soup.main(["--inputs", str(tiny["reward"]), str(replica), "--weights", "0.25", "0.75",
                      "--data", str(tiny["data"]), "--normalize-policy", str(tiny["sft1"]), "--out", str(out),
                      *REWARD_ARGS])
    first, second = (load_file(p / "model.safetensors") for p in (tiny["reward"], replica))
    soup = load_file(out / "model.safetensors")
    assert "score.weight" in soup and soup.keys() == first.keys()
    assert not torch.equal(first["score.weight"], second["score.weight"])  # the seeds differ: a real average
    for name in first:
        torch.testing.assert_close(soup[name], 0.25 * first[name] + 0.75 * second[name], rtol=0, atol=1e-6)

    # recomputed on the soup, not copied from the first ingredient, nor averaged
    stats = json.loads((out / reward.NORMALIZATION_FILE).read_text())
    ingredient_stats = [json.loads((p / reward.NORMALIZATION_FILE).read_text()) for p in (tiny["reward"], replica)]
    assert stats["samples"] == 32 and stats["policy"] == str(tiny["sft1"])
    assert stats["mean"] != ingredient_stats[0]["mean"]
    assert stats["mean"] != pytest.approx(0.25 * ingredient_stats[0]["mean"] + 0.75 * ingredient_stats[1]["mean"])
    # the soup, loaded as PPO loads it, scores held-out pairs as its reward_eval.json says
    model = load_reward_model(str(out)).eval()
    tokenizer = load_tokenizer(str(out))
    model.config.pad_token_id = tokenizer.pad_token_id
    held_out = reward.evaluate_pairs(model, tokenizer, reward.load_pairs(str(tiny["data"] / "prefs_eval")))
    assert json.loads((out / "reward_eval.json").read_text())["eval"]["accuracy"] == held_out["accuracy"]
    meta = json.loads((out / "salsa_meta.json").read_text())
    assert meta["weights"] == [0.25, 0.75] and len(meta["ingredient_eval_accuracy"]) == 2


@pytest.fixture(scope="module")
def probe(tiny, tmp_path_factory):
    """WARM's shared start: the score head probed on the frozen init of the replicas (here the first SFT)."""
    from salsa import reward_probe

    out = tmp_path_factory.mktemp("probe") / "probe"
    reward_probe.main(["--model", str(tiny["sft1"]), "--data", str(tiny["data"]), "--out", str(out),
                       "--steps", "200", "--batch-size", "32", "--threads", "1"])
    return out


def test_the_probe_fits_the_pairs_better_than_a_random_head(probe):
    report = json.loads((probe / "probe_eval.json").read_text())
    assert report["train_loss"] < report["train_loss_random_head"] - 0.01
    assert set(load_file(probe / "score_head.safetensors")) == {"score.weight"}


def test_replicas_fine_tuned_from_the_probe_share_its_head(tiny, replica, probe, tmp_path):
    # fresh heads per seed (the fixture's reward model, seed 0, and the replica, seed 2) point anywhere;
    # two replicas from the probe (seeds 2 and 3, data order differs) stay on the probe's direction
    def head(path):
        return load_file(path / "model.safetensors")["score.weight"].flatten()

    cosine = torch.nn.functional.cosine_similarity
    assert cosine(head(tiny["reward"]), head(replica), dim=0) < 0.9
    probed = []
    for seed in (2, 3):
        out = tmp_path / f"probed{seed}"
        reward.main(["--model", str(tiny["sft1"]), "--data", str(tiny["data"]), "--out", str(out), "--seed", str(seed),
                     "--init-head", str(probe / "score_head.safetensors"), "--normalize-policy", str(tiny["sft1"]),
                     "--steps", "20", "--batch-size", "16", *REWARD_ARGS])
        probed.append(head(out))
    assert cosine(probed[0], probed[1], dim=0) > 0.99
    start = load_file(probe / "score_head.safetensors")["score.weight"].flatten()
    assert cosine(probed[0], start, dim=0) > 0.99


def test_a_head_of_another_shape_is_refused(tiny, tmp_path):
    from safetensors.torch import save_file
    from salsa import reward_probe
    from salsa.modeling import load_reward_model

    save_file({"score.weight": torch.zeros(1, 3)}, str(tmp_path / "head.safetensors"))
    with pytest.raises(reward_probe.artifacts.StageError, match="do not match"):
        reward_probe.load_head(load_reward_model(str(tiny["sft1"])), str(tmp_path / "head.safetensors"))
