"""The one place that builds the accelerator and knows how the processes share the work.

Every training stage runs the same code under one process, DDP, DeepSpeed ZeRO and FSDP.
What differs between them lives here:

* **Who is who.** Rank and world size come from ``torch.distributed`` once it is up, not from
  accelerate's bookkeeping: under DeepSpeed on a CPU, accelerate reports one process and
  "main process" on every rank while ``torch.distributed`` sees them all.
* **Batch geometry.** A stage's ``batch_size`` is the global batch of one optimiser step. Each
  process takes ``batch_size / world`` of it, in micro-batches of ``micro_batch_size``
  (gradient accumulation); DeepSpeed is told the same numbers, so its batch check agrees.
* **Auxiliary models.** Under ZeRO-3, transformers partitions every model loaded after the
  DeepSpeed config exists. Frozen models (reference, reward, normalisation policy) are loaded
  whole instead (``whole_models``) and placed on the process's device.
* **Collectives.** Sums, means and gathers over all ranks (statistics, metrics), and gathered
  parameters for generation with a sharded policy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import resource
import sys

import torch

from salsa.artifacts import StageError


def dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if dist_ready() else 1


def rank() -> int:
    return torch.distributed.get_rank() if dist_ready() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist_ready() and world_size() > 1:
        torch.distributed.barrier()


def shards_weights(accelerator) -> bool:
    """ZeRO / FSDP: each process holds a slice of the weights."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def uses_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def zero_stage(accelerator) -> int:
    if not uses_deepspeed(accelerator):
        return 0
    return int(accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))




@dataclasses.dataclass(frozen=True)
class Batching:
    """How one optimiser step's global batch splits over processes and micro-batches."""

    global_batch: int
    world: int
    micro: int

    @property
    def per_process(self) -> int:
        return self.global_batch // self.world

    @property
    def accumulation(self) -> int:
        return self.per_process // self.micro

    @classmethod
    def of(cls, global_batch: int, micro_batch_size: int, world: int, what: str = "batch_size") -> "Batching":
        if global_batch % world:
            raise StageError(f"{what} {global_batch} must be a multiple of the {world} processes")
        per_process = global_batch // world
        micro = micro_batch_size or per_process
        if per_process % micro:
            raise StageError(f"micro_batch_size {micro} must divide the per-process batch {per_process} "
                             f"({what} {global_batch} / {world} processes)")
        return cls(global_batch, world, micro)


def make_accelerator(mixed_precision: str = "no", seed: int = 0, trackers: list | None = None):
    """The accelerator of every stage. ``trackers``: accelerate tracker objects (training.experiment_trackers)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    _skip_deepspeed_cpu_shm_op()
    # our schedules count optimiser steps of the global batch: step them once per step,
    # not once per process as accelerate's prepared scheduler would
    accelerator = Accelerator(mixed_precision=mixed_precision, step_scheduler_with_optimizer=False,
                              log_with=trackers or None, cpu=_data_parallel_on_cpu())
    set_seed(seed)
    return accelerator


def _skip_deepspeed_cpu_shm_op() -> None:
    """DeepSpeed on CPUs JIT-compiles a shared-memory op when its communication starts (a minute per machine,
    more beside other jobs), which only its inference all-reduce calls; training never does. Marked incompatible,
    it is not built (deepspeed.comm.torch.build_shm_op); deepspeed.ops keeps edits to this dict."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true" or torch.cuda.is_available():
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def launched_as_one_of_several() -> bool:
    """Started by a launcher (torchrun, accelerate, DeepSpeed) as one process of several."""
    return int(os.environ.get("WORLD_SIZE") or 1) > 1


def _data_parallel_on_cpu() -> bool:
    """Several processes without a GPU under a DDP config: accelerate must be told it is on CPUs, or it
    reports one process and wraps nothing while torch.distributed runs several (each would train alone).
    DeepSpeed finds its CPU accelerator by itself; the shipped configs stay GPU configs."""
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    return launched_as_one_of_several() and not deepspeed and not torch.cuda.is_available()


def configure_batching(accelerator, batching: Batching, max_grad_norm: float = 1.0) -> None:
    """Tell DeepSpeed the batch geometry before ``prepare`` (no DataLoader is prepared, so it cannot infer it)."""
    if accelerator.gradient_accumulation_steps != batching.accumulation:
        accelerator.gradient_accumulation_steps = batching.accumulation
    if not uses_deepspeed(accelerator):
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = batching.micro
    ds["gradient_accumulation_steps"] = batching.accumulation
    ds["train_batch_size"] = batching.micro * batching.accumulation * batching.world
    ds["gradient_clipping"] = max_grad_norm




def shard(indices: torch.Tensor) -> torch.Tensor:
    """This process's slice of a global batch of indices (data parallelism)."""
    return indices[rank()::world_size()]




# --- collectives --------------------------------------------------------------------
def _comm_device() -> torch.device:
    """NCCL reduces CUDA tensors, gloo CPU ones."""
    if dist_ready() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _reduce(value: torch.Tensor, op) -> torch.Tensor:
    work = value.detach().to(_comm_device()).clone()
    if dist_ready() and world_size() > 1:
        torch.distributed.all_reduce(work, op=op)
    return work.to(value.device)


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy; the input is left as it is)."""
    return _reduce(value, torch.distributed.ReduceOp.SUM)


def all_mean(value: float | torch.Tensor) -> float:
    return (all_sum(torch.as_tensor(value, dtype=torch.float64)) / world_size()).item()


def all_max(value: float) -> float:
    return _reduce(torch.tensor(value, dtype=torch.float64), torch.distributed.ReduceOp.MAX).item()


def gather(value: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors of every rank along dim 0, in rank order."""
    if not (dist_ready() and world_size() > 1):
        return value.detach()
    work = value.detach().to(_comm_device()).contiguous()
    parts = [torch.empty_like(work) for _ in range(world_size())]
    torch.distributed.all_gather(parts, work)
    return torch.cat(parts).to(value.device)


def release_workers() -> bool:
    """End a stage's collective part: all processes meet, the process group is torn down, and only the
    main process goes on (to evaluate and save alone, without the others waiting on a timeout).
    Returns whether this process goes on."""
    main = is_main()
    if dist_ready() and world_size() > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return main


def end_process(code: int) -> int:
    """Leave a process that joined a process group without tearing the interpreter down.

    destroy_process_group does not free a group that DeepSpeed or accelerate still hold (ZeRO-3 keeps it
    on every parameter), so gloo's run-loop threads outlive it. Should native code re-enter Python while
    the interpreter is finalising, the process aborts ("terminate called without an active exception",
    exit -6) and a job whose files are all written fails. Stages close their files before returning, so
    such a process flushes its streams and exits at once. Returns ``code`` in a process that was not started
    as one of several: a single-process run, a stage called inside a test."""
    joined = dist_ready() and world_size() > 1   # still up: SFT ends on a barrier, not release_workers
    if not (joined or launched_as_one_of_several()):
        return code
    if joined and code == 0:   # every rank got here, so the collective teardown cannot hang
        torch.distributed.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# --- models ---------------------------------------------------------------------------
@contextlib.contextmanager
def whole_models():
    """Load models unpartitioned although a ZeRO-3 config is active (frozen models that are not prepared)."""
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:  # pragma: no cover - transformers without the integration module
        yield
        return
    saved = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def frozen(model, device, dtype: torch.dtype | None = None):
    """An inference-only copy on this process's device: no gradients, eval mode, in ``dtype`` if given."""
    model.requires_grad_(False)
    model.eval()
    if dtype is not None:
        model.to(dtype)
    return model.to(device)


@contextlib.contextmanager
def gathered_for_generation(accelerator, engine, module):
    """``module`` (a submodule of the prepared ``engine``) with full weights for many forward passes.

    ZeRO-3 gathers each layer's weights at every forward call, which costs a collective per layer
    per sampled token and needs every rank to call forward equally often. For sampling, gather the
    policy's weights once and take the per-layer hooks off, then put them back (the pattern of
    DeepSpeed's own ``unwrap_model_for_generation``, limited to one submodule). Without ZeRO-3,
    a no-op.
    """
    if zero_stage(accelerator) != 3:
        yield module
        return
    import deepspeed

    offload = engine.optimizer.parameter_offload if hasattr(engine.optimizer, "parameter_offload") else engine.optimizer
    with deepspeed.zero.GatheredParameters(list(module.parameters())):
        for hook in offload.forward_hooks + offload.backward_hooks:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield module
        finally:
            offload._register_deepspeed_module(offload.module)


def peak_memory_mb(device) -> float:
    """Peak memory of this process: CUDA peak allocated on a GPU, peak resident set size on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10)
