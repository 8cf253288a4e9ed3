"""A KL reference that moves with the policy during PPO.

  ema  (WARP, Ramé et al. 2024): after every update, ref <- (1 - eta) * ref + eta * policy
  sync (trust-region style):     every N updates, ref <- policy

The penalty then keeps the policy near where it recently was rather than where it
started. The KL to the initial reference is logged as well (kl_initial_ref), so runs
with a moving anchor can still be compared with the others at matched KL.
"""

from __future__ import annotations

import copy

import torch

from salsa import artifacts, distributed
from salsa.modeling import response_logprobs

ANCHORS = ("none", "ema", "sync")
ANCHOR_FILE = "anchor.pt"


@torch.no_grad()
def ema_update(anchor: torch.nn.Module, policy: torch.nn.Module, rate: float) -> None:
    """anchor <- (1 - rate) * anchor + rate * policy, parameter by parameter (rate 1: a copy)."""
    anchor_params, policy_params = list(anchor.named_parameters()), list(policy.named_parameters())
    if [n for n, _ in anchor_params] != [n for n, _ in policy_params]:
        raise artifacts.StageError("anchor: the reference and the policy have different parameters; "
                                   "a moving anchor needs the same architecture")
    for (_, ref), (_, new) in zip(anchor_params, policy_params):
        ref.mul_(1.0 - rate).add_(new.detach().to(ref.dtype), alpha=rate)


class MovingAnchor:
    """Moves PPO's reference model after each update; keeps a frozen copy of where it started."""

    def __init__(self, config, reference, accelerator):
        self.mode, self.rate, self.every = config.anchor, config.anchor_rate, config.anchor_sync_every
        self.accelerator = accelerator
        self.model = reference.model
        self.initial = None
        if self.mode == "none":
            return
        if self.mode not in ANCHORS:
            raise artifacts.StageError(f"anchor: unknown {self.mode!r}; choose from {ANCHORS}")
        if self.model is None or config.lora_r > 0:
            raise artifacts.StageError("anchor: a moving reference needs full fine-tuning (lora_r 0) and its own "
                                       "reference model")
        if self.mode == "ema" and not 0 < self.rate <= 1:
            raise artifacts.StageError(f"anchor_rate: EMA rate must be in (0, 1], got {self.rate}")
        if self.mode == "sync" and self.every < 1:
            raise artifacts.StageError(f"anchor_sync_every: must be positive, got {self.every}")
        self.initial = copy.deepcopy(self.model).requires_grad_(False)

    @property
    def active(self) -> bool:
        return self.mode != "none"

    def after_update(self, policy, update: int) -> None:
        """Called once the optimiser has finished update ``update`` (0-based)."""
        if self.mode == "ema":
            ema_update(self.model, policy, self.rate)
        elif self.mode == "sync" and (update + 1) % self.every == 0:
            ema_update(self.model, policy, 1.0)

    @torch.no_grad()
    def kl_to_initial(self, logprobs, ids, mask, query_length, temperature, response_mask, chunk: int) -> dict:
        """Mean sequence KL (k1) of the sampled responses to the initial reference, over all processes."""
        if not self.active:
            return {}
        initial = torch.zeros_like(logprobs)
        for start in range(0, len(ids), chunk):
            rows = slice(start, start + chunk)
            with self.accelerator.autocast():
                initial[rows] = response_logprobs(self.initial, ids[rows], mask[rows], query_length, temperature)
        kl = ((logprobs - initial) * response_mask).sum(1)
        return {"kl_initial_ref": distributed.gather(kl.float()).mean().item()}

    def checkpoint_files(self) -> dict:
        return {ANCHOR_FILE: self.model.state_dict()} if self.active else {}

    def resume(self, path) -> None:
        if self.active:
            self.model.load_state_dict(torch.load(path))
