import pytest
import torch

from salsa.ppo_math import (AdaptiveKLController, generalized_advantages, kl_per_token, masked_mean,
                            masked_whiten, policy_loss, token_rewards, value_loss)


def test_gae_matches_a_hand_computed_example():
    # one sequence of 3 real tokens then padding; gamma 0.9, lambda 0.5
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = generalized_advantages(rewards, values, mask, gamma=0.9, lam=0.5)
    d2 = 1.0 - 0.3                      # last real token: no bootstrap from padding
    d1 = 0.0 + 0.9 * 0.3 - 0.4
    d0 = 0.0 + 0.9 * 0.4 - 0.5
    a2 = d2
    a1 = d1 + 0.45 * a2
    a0 = d0 + 0.45 * a1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[a0 + 0.5, a1 + 0.4, a2 + 0.3, 0.0]]))


def test_gae_with_gamma_lambda_one_is_return_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 1.0]])
    values = torch.tensor([[0.3, 0.2, 0.1]])
    adv, _ = generalized_advantages(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    returns_to_go = torch.tensor([[0.9, 0.8, 1.0]])
    assert torch.allclose(adv, returns_to_go - values)


def test_token_rewards_put_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards = token_rewards(torch.tensor([2.0, 3.0]), kl, mask, beta=0.1)
    assert torch.allclose(rewards, torch.tensor([[-0.05, -0.05, 1.95], [2.9, 0.0, 0.0]]))


def test_kl_estimators():
    logp = torch.log(torch.tensor([0.5, 0.2]))
    ref = torch.log(torch.tensor([0.25, 0.4]))
    k1 = kl_per_token(logp, ref, "k1")
    k3 = kl_per_token(logp, ref, "k3")
    assert torch.allclose(k1, logp - ref)
    r = torch.exp(ref - logp)
    assert torch.allclose(k3, (r - 1) - torch.log(r))
    assert (k3 >= 0).all()
    assert torch.equal(kl_per_token(logp, logp, "k3"), torch.zeros(2))
    with pytest.raises(ValueError):
        kl_per_token(logp, ref, "k2")


def test_masked_whiten_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    white = masked_whiten(x, mask)
    assert white[0, 3] == 0
    assert masked_mean(white, mask).abs() < 1e-6
    assert torch.allclose(white[0, :3], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-4)


def test_policy_loss_is_clipped_and_ratio_one_gives_minus_mean_advantage():
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    loss, clipfrac, approx_kl, ratio = policy_loss(old.clone(), old, adv, mask, cliprange=0.2)
    assert torch.equal(ratio, torch.ones(1, 2)) and loss == 0 and clipfrac == 0 and approx_kl == 0
    new = torch.log(torch.tensor([[1.5, 1.5]]))  # ratio 1.5 on both tokens
    loss, clipfrac, _, _ = policy_loss(new, old, adv, mask, cliprange=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(1.5, 1.2) = 1.5 (unclipped)
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_value_loss_is_clipped():
    old = torch.tensor([[0.0]])
    returns = torch.tensor([[1.0]])
    loss, clipfrac = value_loss(torch.tensor([[0.9]]), old, returns, torch.ones(1, 1), cliprange_value=0.2)
    # clipped prediction 0.2 -> error 0.64 dominates 0.01
    assert loss.item() == pytest.approx(0.5 * 0.64) and clipfrac.item() == 1.0


def test_adaptive_kl_controller_moves_beta_toward_target():
    controller = AdaptiveKLController(beta=0.1, target=1.0, horizon=100)
    assert controller.update(observed_kl=3.0, n_steps=10) == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    assert controller.update(observed_kl=0.0, n_steps=10) < 0.1 * (1 + 0.2 * 0.1)
