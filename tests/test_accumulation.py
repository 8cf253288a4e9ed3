"""Batch geometry, gradient accumulation and statistics over processes, without a model launch.

SGD, not Adam: Adam's first steps are invariant to a constant loss scale, so a wrong
accumulation factor would pass unseen; SGD's update is proportional to the gradient.
"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from salsa import artifacts, distributed, training
from salsa.ppo_math import masked_whiten


def test_batching_splits_the_global_batch_and_refuses_what_does_not_divide():
    b = distributed.Batching.of(32, 4, 2)
    assert (b.per_process, b.micro, b.accumulation) == (16, 4, 4)
    assert distributed.Batching.of(32, 0, 2).accumulation == 1  # 0: the whole share at once
    with pytest.raises(artifacts.StageError, match="multiple of the 3 processes"):
        distributed.Batching.of(32, 4, 3)
    with pytest.raises(artifacts.StageError, match="micro_batch_size 5 must divide the per-process batch 16"):
        distributed.Batching.of(32, 5, 2)


def sgd_step(micro: int, weights: torch.Tensor) -> torch.Tensor:
    """One SGD step of a linear model on 8 examples with token-weighted losses, as salsa.sft does it."""
    accelerator = distributed.make_accelerator()
    batching = distributed.Batching.of(8, micro, 1)
    distributed.configure_batching(accelerator, batching)
    model = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(weights)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    x = torch.arange(24, dtype=torch.float32).reshape(8, 3) / 10
    y = torch.linspace(-1, 1, 8)[:, None]
    counts = torch.tensor([1, 2, 3, 4, 1, 2, 3, 4], dtype=torch.float32)  # "tokens" per example
    for chunk in torch.arange(8).split(batching.micro):
        with training.micro_step(accelerator, model):
            summed = (((model(x[chunk]) - y[chunk]) ** 2).squeeze(1) * counts[chunk]).sum()
            accelerator.backward(summed * training.loss_scale(batching) / counts.sum())
    training.finish_step(accelerator, model, optimizer, scheduler, max_grad_norm=1e9)
    return accelerator.unwrap_model(model).weight.detach().clone()


def test_micro_batches_give_the_update_of_one_batch():
    start = torch.tensor([[0.3, -0.2, 0.1]])
    whole = sgd_step(8, start)
    assert (whole - start).abs().max() > 1e-2  # the step moved the weights
    for micro in (1, 2, 4):
        torch.testing.assert_close(sgd_step(micro, start), whole, rtol=0, atol=1e-6)


def _whiten_worker(rank: int, port: int, x: torch.Tensor, mask: torch.Tensor, out: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    rows = slice(rank * 3, rank * 3 + 3)
    out[rank] = masked_whiten(x[rows], mask[rows], all_sum=distributed.all_sum)
    out[f"gathered{rank}"] = distributed.gather(x[rows, :1])
    torch.distributed.destroy_process_group()


def test_advantage_whitening_uses_every_processs_rollouts():
    torch.manual_seed(0)
    x = torch.randn(6, 5) * torch.arange(1, 7)[:, None]  # ranks see different scales
    mask = (torch.rand(6, 5) > 0.3).float()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_whiten_worker, args=(port, x, mask, out), nprocs=2)
    whole = masked_whiten(x, mask)
    torch.testing.assert_close(torch.cat([out[0], out[1]]), whole, rtol=0, atol=1e-6)
    assert not torch.allclose(out[0], masked_whiten(x[:3], mask[:3]), atol=1e-3)  # per-rank would differ
    torch.testing.assert_close(out["gathered0"], x[:, :1])
