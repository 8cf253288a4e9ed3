"""Artifacts on disk: atomic writes, metadata, seeding.

A stage never writes into its final output path directly. It builds the
artifact in a temporary sibling directory and renames it into place at the
end, so a crash or a kill never leaves a directory that looks finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Iterator

METADATA_FILE = "salsa_meta.json"
_TRACKED_PACKAGES = ("salsa-workflow", "torch", "transformers", "accelerate", "datasets",
                     "peft", "tokenizers", "safetensors", "pandas", "numpy", "snakemake")


class StageError(Exception):
    """A user-facing error: printed as one line, the stage exits non-zero."""


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            pass
    return versions


def git_commit() -> str | None:
    """The commit of the workflow code (with '-dirty' when edited), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically (temp file in the same directory, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(to_jsonable(payload), handle, indent=2, sort_keys=False)
        handle.write("\n")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise StageError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None


def write_metadata(directory: str | Path, stage: str, config: Any, seed: int | None,
                   extra: dict[str, Any] | None = None) -> None:
    payload = {
        "stage": stage,
        "seed": seed,
        "config": to_jsonable(config),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if extra:
        payload.update(to_jsonable(extra))
    write_json(Path(directory) / METADATA_FILE, payload)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    import torch
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> None:
    """Pin intra-op threads: CPU float results can depend on the thread count."""
    if threads:
        import torch
        torch.set_num_threads(int(threads))


def run_main(main_fn, argv: list[str] | None = None) -> int:
    """Run a stage's main, turning StageError into a one-line message and exit 1."""
    try:
        main_fn(argv)
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
