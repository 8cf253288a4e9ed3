"""The arithmetic of PPO for language models, as pure tensor functions.

Shapes: [batch, response_tokens]; ``mask`` is 1 on real response tokens
(up to and including EOS) and 0 on padding. Every function ignores masked
positions, so padding never leaks into a loss or a statistic.
"""

from __future__ import annotations

import dataclasses

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, all_sum=None) -> torch.Tensor:
    """Normalise to unit variance over the valid positions (N implementation details: advantage whitening).

    ``all_sum``: sums a tensor over processes, so mean and variance are those of the whole batch of every
    process (as OpenRLHF does), not of each process's slice; None = this process alone.
    """
    total = all_sum or (lambda t: t)
    mask = mask.to(x.dtype)
    count = total(mask.sum())
    mean = total((x * mask).sum()) / count.clamp(min=1)
    variance = total(((x - mean) ** 2 * mask).sum()) / count.clamp(min=1)
    if count > 1:  # unbiased, as in the reference implementation
        variance = variance * count / (count - 1)
    whitened = (x - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) on tokens sampled from the policy.

    k1 = log p - log q (unbiased, can be negative); k3 = (q/p - 1) - log(q/p)
    (unbiased and always >= 0; Schulman's "Approximating KL divergence").
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl_estimator: unknown {estimator!r}; choose k1 or k3")


def token_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """-beta * KL on every response token, plus the sequence score on its last real token."""
    rewards = -beta * kl * mask
    last = (mask.long() * torch.arange(mask.shape[1], device=mask.device)).argmax(1)
    has_tokens = mask.sum(1) > 0
    rewards[torch.arange(len(score), device=score.device)[has_tokens], last[has_tokens]] += score[has_tokens]
    return rewards


def generalized_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                           gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016). Returns (advantages, returns), zero on padding."""
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        next_mask = mask[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value * next_mask - values[:, t]
        running = delta + gamma * lam * running * next_mask
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(new_logprobs, old_logprobs, advantages, mask, cliprange: float):
    """Clipped surrogate objective; returns (loss, clip fraction, approx KL old->new, ratio)."""
    log_ratio = new_logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = 0.5 * masked_mean(log_ratio ** 2, mask)
    return loss, clipfrac, approx_kl, ratio


def value_loss(new_values, old_values, returns, mask, cliprange_value: float):
    """Clipped value loss: the value may move at most ``cliprange_value`` from its rollout estimate."""
    clipped_values = old_values + torch.clamp(new_values - old_values, -cliprange_value, cliprange_value)
    unclipped_error = (new_values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    clipfrac = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, clipfrac


@dataclasses.dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019): nudge beta so the observed KL tracks a target.

    beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon)
    """

    beta: float
    target: float
    horizon: float

    def update(self, observed_kl: float, n_steps: int) -> float:
        error = max(-0.2, min(0.2, observed_kl / self.target - 1.0))
        self.beta *= 1.0 + error * n_steps / self.horizon
        return self.beta


@dataclasses.dataclass
class FixedKLController:
    beta: float

    def update(self, observed_kl: float, n_steps: int) -> float:
        return self.beta
