"""What every training loop shares: accelerator, optimiser, schedule, batches, resume.

Loops stay in their own modules (sft, reward, ppo) so each reads top to
bottom; these helpers only remove the plumbing they would otherwise repeat.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Iterator

import torch

from salsa import artifacts


def make_accelerator(mixed_precision: str = "no", seed: int = 0):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(mixed_precision=mixed_precision)
    set_seed(seed)
    return accelerator


def adamw(model: torch.nn.Module, lr: float, weight_decay: float = 0.0, eps: float = 1e-8):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=eps)


def linear_schedule(optimizer, total_steps: int, warmup_steps: int = 0):
    """Linear warm-up, then linear decay to exactly zero at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batch_indices(num_examples: int, batch_size: int, seed: int, start_step: int = 0) -> Iterator[torch.Tensor]:
    """Endless seeded shuffles; the seed alone fixes the data order, so a resumed run replays it."""
    per_epoch = max(1, num_examples // batch_size)
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for i in range(offset, per_epoch):
            yield order[i * batch_size:(i + 1) * batch_size]
        epoch, offset = epoch + 1, 0


def shard_for_process(indices: torch.Tensor, accelerator) -> torch.Tensor:
    """Each process takes its slice of the global batch (data parallelism)."""
    return indices[accelerator.process_index::accelerator.num_processes]


def resume_dir(out: str | Path) -> Path:
    """Where a stage keeps its checkpoints: beside, not inside, its final output."""
    out = Path(out)
    return out.parent / f".{out.name}.resume"


def try_resume(accelerator, out: str | Path) -> int:
    """Load the last checkpoint of an interrupted run; return the step to continue from."""
    state = resume_dir(out)
    marker = state / "step.json"
    if not marker.exists():
        return 0
    accelerator.load_state(str(state / "state"))
    step = json.loads(marker.read_text())["step"]
    accelerator.print(f"resuming from step {step} ({state})")
    return step


def save_checkpoint(accelerator, out: str | Path, step: int, extra: dict | None = None) -> None:
    state = resume_dir(out)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state.mkdir(parents=True, exist_ok=True)
    accelerator.save_state(str(state / "state"))
    if accelerator.is_main_process:
        artifacts.write_json(state / "step.json", {"step": step, **(extra or {})})


def clear_checkpoints(out: str | Path) -> None:
    shutil.rmtree(resume_dir(out), ignore_errors=True)


def progress(total: int, initial: int = 0, desc: str = "", disable: bool = False):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=disable, mininterval=2.0,
                dynamic_ncols=True)


def finite_or_raise(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise artifacts.StageError(f"{what} became {value}: lower the learning rate or check the data")
    return value
