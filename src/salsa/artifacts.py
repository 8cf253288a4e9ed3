"""Artifacts on disk: atomic writes, metadata, seeding.

A stage never writes into its final output path directly. It builds the
artifact in a temporary sibling directory and renames it into place at the
end, so a crash or a kill never leaves a directory that looks finished.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import json
import os
import platform
import random
import secrets
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


@contextlib.contextmanager
def atomic_text_file(path: str | Path, prefix: str | None = None):
    """A text handle on a temp file beside `path`, renamed onto it only when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix or f".{path.name}.", dir=path.parent)
    honour_umask(fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Rows of equal keys as CSV with a header (the first row's keys)."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically (temp file in the same directory, then rename)."""
    with atomic_text_file(path) as handle:
        json.dump(to_jsonable(payload), handle, indent=2, sort_keys=False)
        handle.write("\n")


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def honour_umask(fd: int) -> None:
    """Give a mkstemp file the mode a plain open() would: mkstemp's 0600 hides results from the user's group."""
    os.fchmod(fd, 0o666 & ~_umask())


def _fresh_dir(parent: Path, prefix: str) -> Path:
    """Like mkdtemp, but with the permissions the user's umask gives (mkdtemp's 0700 hides shared results)."""
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_dir(final.parent, f".{final.name}.tmp-")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def load_split(path: str | Path, columns: tuple[str, ...] = ()) -> Any:
    """A dataset split saved with save_to_disk, or a StageError naming the file at fault.

    Emptiness is read from state.json before loading: datasets cannot load an empty
    split it saved itself, so a check after loading would never be reached.
    """
    path = Path(path)
    state = path / "state.json"
    if not state.is_file():
        raise StageError(f"{path}: not a dataset saved with save_to_disk (no state.json)")
    files = [path / entry.get("filename", "") for entry in read_json(state).get("_data_files") or []]
    if not files:
        raise StageError(f"{path}: empty split (no rows)")
    for file in files:
        if not file.is_file():
            raise StageError(f"{file}: data file missing")
    from datasets import load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except Exception as err:  # pyarrow and datasets raise many types for a damaged file
        culprit = _unreadable_arrow_file(files) or path
        raise StageError(f"{culprit}: cannot load dataset ({str(err).splitlines()[0]})") from None
    if len(dataset) == 0:
        raise StageError(f"{path}: empty split (no rows)")
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise StageError(f"{path}: missing column(s) {missing} (has {dataset.column_names})")
    return dataset


def _unreadable_arrow_file(files: list[Path]) -> Path | None:
    import pyarrow as pa

    for file in files:
        try:
            with pa.memory_map(str(file)) as source:
                pa.ipc.open_stream(source).read_all()
        except Exception:
            return file
    return None


def check_safetensors(directory: str | Path) -> None:
    """Refuse a truncated or damaged .safetensors file by its header, before a loader meets it."""
    for file in sorted(Path(directory).glob("*.safetensors")):
        size = file.stat().st_size
        try:
            with open(file, "rb") as handle:
                header_size = int.from_bytes(handle.read(8), "little")
                if size < 8 or header_size > size - 8:
                    raise ValueError("header runs past the end of the file")
                header = json.loads(handle.read(header_size))
            data_end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise StageError(f"{file}: damaged safetensors file ({err})") from None
        if 8 + header_size + data_end != size:
            raise StageError(f"{file}: truncated or damaged safetensors file ({size} bytes, the header "
                             f"describes {8 + header_size + data_end})")


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
    """Run a stage's main, turning StageError into a one-line message and exit 1 (recorded for salsa.launch).
    A process of a multi-process stage exits here (salsa.distributed.end_process)."""
    try:
        code = main_fn(argv)
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        marker = os.environ.get("SALSA_STAGE_ERROR_FILE")
        if marker:   # salsa.launch: a retry of this job fails at once with the same line instead of rerunning
            with contextlib.suppress(OSError):
                Path(marker).write_text(f"error: {err}\n")
        code = 1
    except SystemExit as stop:   # a stop signal's checkpoint (training.PREEMPTED_EXIT_CODE), argparse's refusal
        if stop.code is not None and type(stop.code) is not int:
            raise
        code = stop.code or 0
    code = code if type(code) is int else 0  # a main may report a verdict (salsa pin: 1 = not pinned)
    distributed = sys.modules.get("salsa.distributed")  # not imported: this process joined no group
    return distributed.end_process(code) if distributed else code
