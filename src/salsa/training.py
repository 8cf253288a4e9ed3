"""What every training loop shares: settings, accelerator, optimiser, schedule, batches, resume.

Loops stay in their own modules (sft, reward, ppo, dpo) so each reads top to bottom; these
helpers only remove the plumbing they would otherwise repeat. How processes share the work
(ranks, batch geometry, sharded models) lives in salsa.distributed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
from pathlib import Path
from typing import Iterator

import torch

from salsa import artifacts, distributed
from salsa.args import arg
from salsa.distributed import Batching, shards_weights  # noqa: F401  (re-exported for the stages)


@dataclasses.dataclass
class TrainingConfig:
    """Settings every training stage shares. Stage configs extend it (and may change a default)."""

    out: str = arg(help="output directory")
    seed: int = arg(0, help="data order, initialisation and sampling")
    lr: float = arg(1e-3, help="peak learning rate")
    weight_decay: float = arg(0.0, help="AdamW weight decay")
    max_grad_norm: float = arg(1.0, help="gradient clipping (global norm)")
    micro_batch_size: int = arg(0, help="examples per forward/backward on each process; each process's share of "
                                        "the batch is reached by gradient accumulation (0 = the whole share at once)")
    gradient_checkpointing: bool = arg(False, help="recompute activations in the backward pass (less memory)")
    dtype: str = arg("float32", help="weights dtype: float32, bfloat16 or float16")
    mixed_precision: str = arg("no", help="accelerate mixed precision: no, bf16 or fp16")
    checkpoint_every: int = arg(0, help="save a resumable checkpoint every N steps (0 = never)")
    threads: int = arg(0, help="torch CPU threads (0 = torch default)")
    report_to: list[str] = arg([], help="experiment trackers: tensorboard, wandb (none by default)")
    tracking_dir: str = arg("", help="tracking logs root (default: <out>.tracking next to the output)")
    run_name: str = arg("", help="tracker run name (default: the output's path below --tracking-dir's parent, "
                                 "else its name)")


@dataclasses.dataclass
class LoraSettings:
    """LoRA fields of the stages that can train an adapter instead of every weight."""

    lora_r: int = arg(0, help="LoRA rank; 0 = full fine-tuning")
    lora_alpha: int = arg(16, help="LoRA alpha")
    lora_target_modules: list[str] = arg(["q_proj", "k_proj", "v_proj", "o_proj"], help="modules LoRA adapts")


def make_accelerator(config: TrainingConfig, trackers: bool = True):
    """The stage's accelerator, under the autocast its dtype implies."""
    from salsa.modeling import mixed_precision_mode

    install_preemption_handler()
    return distributed.make_accelerator(mixed_precision_mode(config.dtype, config.mixed_precision), config.seed,
                                        experiment_trackers(config) if trackers else None)


def enable_gradient_checkpointing(model) -> None:
    """Non-reentrant checkpointing (works with frozen inputs, LoRA and DDP)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "config"):
        model.config.use_cache = False


def full_state_dict(accelerator, model) -> dict | None:
    """The gathered weights when they are sharded (a collective: every process calls it), else None."""
    return accelerator.get_state_dict(model) if shards_weights(accelerator) else None


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


def shard_for_process(indices: torch.Tensor, accelerator=None) -> torch.Tensor:
    """Each process takes its slice of the global batch (data parallelism); ranks from torch.distributed."""
    return distributed.shard(indices)


def resume_dir(out: str | Path) -> Path:
    """Where a stage keeps its checkpoints: beside, not inside, its final output."""
    out = Path(out)
    return out.parent / f".{out.name}.resume"


# A checkpoint is a complete step-NNNNNNN/ folder; latest.json, rewritten atomically
# after the folder is complete, names it. A kill mid-save leaves the previous one valid.
LATEST = "latest.json"
# Test hook: kill the process right after the checkpoint of this step (a preemption).
KILL_AFTER_CHECKPOINT = "SALSA_KILL_AFTER_CHECKPOINT"
_NOT_IN_FINGERPRINT = {"out", "threads", "checkpoint_every", "report_to", "tracking_dir", "run_name"}


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def input_identity(path: str | Path) -> str:
    """What an input holds, not where: the digest of its artifact's salsa_meta.json (rewritten by every run
    of the stage that made it), or for a directory made elsewhere the names, sizes and mtimes of its files."""
    path = Path(path)
    for directory in [path, *list(path.parents)[:2]]:  # data/sft and ppo/.../model live inside an artifact
        meta = directory / artifacts.METADATA_FILE
        if meta.is_file():
            return hashlib.sha256(meta.read_bytes()).hexdigest()[:16]
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return _digest([(str(f.relative_to(path)) if f != path else f.name, f.stat().st_size, f.stat().st_mtime_ns)
                    for f in files])


def input_identities(config) -> dict[str, str]:
    """Identity of every setting that names an existing file or directory (the stage's inputs)."""
    settings = artifacts.to_jsonable(config)
    return {k: input_identity(v) for k, v in settings.items()
            if k not in _NOT_IN_FINGERPRINT and isinstance(v, str) and v and os.path.exists(v)}


def settings_fingerprint(config) -> str:
    return _digest({k: v for k, v in artifacts.to_jsonable(config).items() if k not in _NOT_IN_FINGERPRINT})


def config_fingerprint(config) -> str:
    """Hash of the settings and of the inputs' contents, so a stale checkpoint is never resumed."""
    return _digest([settings_fingerprint(config), input_identities(config)])


def _stale_reason(info: dict, config) -> str | None:
    """Why a checkpoint does not belong to this run, or None when it does."""
    if info.get("fingerprint") == config_fingerprint(config):
        return None
    if info.get("settings") is None:  # written before inputs were fingerprinted
        return "different settings"
    reasons = []
    if info["settings"] != settings_fingerprint(config):
        reasons.append("different settings")
    now, then = input_identities(config), info.get("inputs", {})
    changed = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
    if changed:
        reasons.append(f"other inputs ({', '.join(changed)} changed)")
    return " and ".join(reasons) or "different settings"


def latest_checkpoint(out: str | Path) -> tuple[Path, dict] | None:
    marker = resume_dir(out) / LATEST
    if not marker.exists():
        return None
    info = json.loads(marker.read_text())
    return resume_dir(out) / info["dir"], info


def try_resume(accelerator, out: str | Path, config=None) -> int:
    """Load the last checkpoint of an interrupted run; return the step to continue from."""
    found = latest_checkpoint(out)
    if found is None:
        return 0
    directory, info = found
    stale = _stale_reason(info, config) if config is not None else None
    if stale:
        accelerator.print(f"ignoring checkpoint {directory}: written with {stale}; starting from step 0")
        distributed.barrier()
        if distributed.is_main():
            clear_checkpoints(out)
        return 0
    accelerator.load_state(str(directory / "state"))  # weights, optimiser, scheduler, RNG states
    accelerator.print(f"resuming from step {info['step']} ({directory})")
    return int(info["step"])


def resume_extra(out: str | Path) -> dict:
    """The loop state a stage saved with its last checkpoint (e.g. PPO's metrics rows)."""
    found = latest_checkpoint(out)
    return json.loads((found[0] / "extra.json").read_text()) if found else {}


def rank_file_name(name: str) -> str:
    """Per-process loop state (e.g. a sampler's RNG) is saved by every process under its own name."""
    return name if distributed.world_size() == 1 else f"rank{distributed.rank()}-{name}"


def resume_file(out: str | Path, name: str) -> Path:
    found = latest_checkpoint(out)
    if found is None:
        raise artifacts.StageError(f"{resume_dir(out)}: no checkpoint to read {name} from")
    path = found[0] / rank_file_name(name)
    if not path.exists():
        raise artifacts.StageError(f"{path}: missing; was the checkpoint written with another process count?")
    return path


def save_checkpoint(accelerator, out: str | Path, step: int, extra: dict | None = None, config=None,
                    files: dict | None = None) -> None:
    """Save weights, optimiser, scheduler and RNG states, plus ``extra`` (JSON, from the main process) and
    ``files`` (torch.save, each process its own)."""
    root = resume_dir(out)
    directory = root / f"step-{step:07d}"
    distributed.barrier()
    if distributed.is_main():
        shutil.rmtree(directory, ignore_errors=True)  # a half-written save of this step from a killed run
        directory.mkdir(parents=True)
    distributed.barrier()
    accelerator.save_state(str(directory / "state"))
    for name, value in (files or {}).items():
        torch.save(value, directory / rank_file_name(name))
    distributed.barrier()
    if distributed.is_main():
        artifacts.write_json(directory / "extra.json", extra or {})
        previous = latest_checkpoint(out)
        identity = ({"fingerprint": config_fingerprint(config), "settings": settings_fingerprint(config),
                     "inputs": input_identities(config)} if config else {"fingerprint": None})
        artifacts.write_json(root / LATEST, {"step": step, "dir": directory.name, "processes":
                                             distributed.world_size(), **identity})
        if previous and previous[0] != directory:
            shutil.rmtree(previous[0], ignore_errors=True)
    distributed.barrier()
    if os.environ.get(KILL_AFTER_CHECKPOINT) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


# --- preemption: SLURM sends SIGTERM ahead of the time limit (stop_signal); SIGUSR1 by hand ----
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: checkpointed on a signal; rerun the job to resume
_signal_received: list[int] = []


def install_preemption_handler() -> None:
    """Remember SIGTERM / SIGUSR1 instead of dying: the loop checkpoints at the end of the step and exits."""
    def remember(signum, frame):
        _signal_received.append(signum)
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, remember)


def preempted() -> bool:
    """Whether any process got a stop signal (a collective under several processes: all must agree)."""
    return distributed.all_max(float(bool(_signal_received))) > 0


def stop_if_preempted(accelerator, out, done: int, total: int, extra: dict, config, files: dict | None = None):
    """After step ``done`` of ``total``: on a stop signal, checkpoint and exit so the job can be requeued."""
    if done >= total or not preempted():
        return
    save_checkpoint(accelerator, out, done, extra, config, files)
    accelerator.print(f"stop signal: checkpointed step {done} of {total} in {resume_dir(out)}; rerun to resume")
    raise SystemExit(PREEMPTED_EXIT_CODE)


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




@contextlib.contextmanager
def micro_step(accelerator, model):
    """One micro-batch of an optimiser step: gradients sync (DDP) or the step runs (DeepSpeed) on the last.

    accelerate counts the micro-batches (its gradient_accumulation_steps is set by
    distributed.configure_batching) and divides each loss by their number; DeepSpeed does the same.
    """
    with accelerator.accumulate(model):
        yield


def finish_step(accelerator, model, optimizer, scheduler, max_grad_norm: float = 1.0) -> None:
    """Clip, step the optimiser and the schedule, clear gradients; after the last micro-batch of a step.
    Under DeepSpeed the engine already clipped and stepped in backward; the optimiser calls are no-ops."""
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def loss_scale(batching: Batching) -> float:
    """Multiplier that turns (sum of per-example losses / global count) into what backward expects.

    accelerate and DeepSpeed divide each micro-batch loss by the accumulation count and DDP averages
    gradients over processes, so ``scale * sum / global_count`` per micro-batch gives the gradient of
    the global batch's mean loss, exactly as one process would compute it on the whole batch.
    """
    return float(batching.world * batching.accumulation)


def after_step(accelerator, config, bar, losses: list[float], loss: float, step: int, what: str) -> None:
    """Record the loss (refusing NaN/inf), move the progress bar, checkpoint when due."""
    losses.append(finite_or_raise(loss, f"{what} loss at step {step}"))
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
    if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
        save_checkpoint(accelerator, config.out, step + 1, {"losses": losses}, config)
    else:
        stop_if_preempted(accelerator, config.out, step + 1, config.steps, {"losses": losses}, config)


# --- experiment tracking (TensorBoard / W&B through accelerate's trackers) -------
TRACKERS = ("tensorboard", "wandb")


def tracking_location(config) -> tuple[Path, str]:
    """(root directory, run name) of a stage's tracking logs: by default ``<out>.tracking/``.

    Under a ``--tracking-dir`` the run is named by its output's path next to that directory
    (``results/x/ppo/salsa/seed1`` under ``results/x/tracking`` -> ``ppo/salsa/seed1``), so the
    workflow passes one directory and every run gets its own name.
    """
    out = Path(config.out)
    if config.run_name:
        name = config.run_name
    elif config.tracking_dir and out.resolve().is_relative_to(Path(config.tracking_dir).resolve().parent):
        name = out.resolve().relative_to(Path(config.tracking_dir).resolve().parent).as_posix()
    else:
        name = out.name
    root = Path(config.tracking_dir) if config.tracking_dir else out.parent / f"{out.name}.tracking"
    return root, name


def requested_trackers(config) -> list[str]:
    """``report_to`` as tracker names: entries may be comma lists, ``none`` means none (how the workflow
    passes "off" through a Snakemake resource, which is no rerun trigger)."""
    names = [part.strip() for entry in config.report_to for part in entry.split(",")]
    return list(dict.fromkeys(n for n in names if n and n != "none"))


def experiment_trackers(config) -> list:
    """accelerate tracker objects for ``config.report_to`` (empty: no tracking, the default).

    accelerate drops a tracker whose package is missing with a debug message; a user who asked
    for curves gets an error instead.
    """
    from accelerate.tracking import TensorBoardTracker, WandBTracker
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    root, run_name = tracking_location(config)
    trackers = []
    for name in requested_trackers(config):
        if name == "tensorboard":
            if not is_tensorboard_available():
                raise artifacts.StageError("report_to tensorboard: install it with pip install -e '.[tracking]'")
            trackers.append(TensorBoardTracker(run_name, root))
        elif name == "wandb":
            if not is_wandb_available():
                raise artifacts.StageError("report_to wandb: install it with pip install wandb")
            trackers.append(WandBTracker(os.environ.get("WANDB_PROJECT", "salsa"), name=run_name, dir=str(root),
                                         group=os.environ.get("WANDB_RUN_GROUP")))
        else:
            raise artifacts.StageError(f"report_to: unknown tracker {name!r}; choose from {list(TRACKERS)}")
    return trackers


def start_tracking(accelerator, config, stage: str, resumed: bool = False) -> None:
    """Open the runs and record the stage's settings as hyperparameters (no-op without trackers).
    A rerun from scratch first clears the run's old TensorBoard logs; a resumed run appends."""
    if not accelerator.log_with:
        return
    root, run_name = tracking_location(config)
    if distributed.is_main() and not resumed:
        shutil.rmtree(root / run_name, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    settings = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                for k, v in artifacts.to_jsonable(config).items()}
    accelerator.init_trackers(stage, config={"stage": stage, **settings})


def log_metrics(accelerator, values: dict, step: int) -> None:
    """Scalars to every tracker; NaN (e.g. gold without a task) is left out."""
    if accelerator.log_with:
        accelerator.log({k: float(v) for k, v in values.items()
                         if isinstance(v, (int, float)) and math.isfinite(v)}, step=step)


def end_tracking(accelerator) -> None:
    if accelerator.log_with:
        accelerator.end_training()
