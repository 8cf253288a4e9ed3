"""The held-out splits follow the PPO prompts' distribution and share no prompt with training."""

from collections import Counter

import pytest

from salsa.data import PrepareDataConfig, generate
from salsa.task import parse_prompt

# The default experiment's task (config/config.yaml) at smaller sizes: 2-item lists have only
# 100 possible prompts per operation, so rejection-sampling unseen prompts leaves none of them.
CONFIG = PrepareDataConfig(out="unused", num_symbols=10, min_len=2, max_len=5, ood_min_len=6, ood_max_len=7,
                           n_pretrain=2000, n_sft=1500, n_prefs_train=3000, n_prefs_eval=600,
                           n_ppo_prompts=2000, n_eval_id=600, n_eval_ood=50)


@pytest.fixture(scope="module")
def splits():
    return generate(CONFIG)


def _chi_square(observed: Counter, expected_share: dict, n: int) -> float:
    return sum((observed.get(k, 0) - n * p) ** 2 / (n * p) for k, p in expected_share.items())


# 99.9% quantiles of chi-square with 3 and 2 degrees of freedom (4 lengths, 3 operations)
CHI2_999 = {3: 16.27, 2: 13.82}


@pytest.mark.parametrize("split,column", [("eval_id", "prompt"), ("prefs_eval", "prompt")])
@pytest.mark.parametrize("feature", ["length", "op"])
def test_heldout_histograms_match_the_ppo_prompts(splits, split, column, feature):
    def key(prompt):
        problem = parse_prompt(prompt)
        return len(problem.numbers) if feature == "length" else problem.op

    ppo = Counter(key(r["prompt"]) for r in splits["ppo_prompts"])
    share = {k: v / sum(ppo.values()) for k, v in ppo.items()}
    held = Counter(key(r[column]) for r in splits[split])
    n = sum(held.values())
    # every cell is populated (today's rejection sampling gave no 2-item list at all) ...
    assert set(held) == set(share), (split, feature, held)
    # ... and the shares agree within sampling noise (both histograms are samples: variance of each added)
    n_ppo = sum(ppo.values())
    statistic = _chi_square(held, share, n) / (1 + n / n_ppo)
    assert statistic < CHI2_999[len(share) - 1], (split, feature, held, ppo)


def test_heldout_prompts_are_unseen_in_training(splits):
    training = ({r["messages"][0]["content"] for r in splits["pretrain"] + splits["sft"]}
                | {r["prompt"] for r in splits["prefs_train"] + splits["ppo_prompts"]})
    eval_id = {r["prompt"] for r in splits["eval_id"]}
    prefs_eval = {r["prompt"] for r in splits["prefs_eval"]}
    assert not eval_id & training and not prefs_eval & training and not eval_id & prefs_eval
    # 2-item cells (100 prompts each): held out without being exhausted for training
    short = Counter(len(parse_prompt(r["prompt"]).numbers) for r in splits["ppo_prompts"])
    assert short[2] > 0.2 * len(splits["ppo_prompts"])
