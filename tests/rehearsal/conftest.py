"""The rehearsal fixture (rehearsal_fixtures.py), built once and shared by every rehearsal: in a temp
directory named by a digest of the builder's source and inputs, so later sessions (and pytest-xdist
workers) reuse it; a file lock guards the build."""

from __future__ import annotations

import getpass
import hashlib
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_BENCHMARKS = REPO.parent / "shared" / "benchmarks"


@pytest.fixture(scope="session")
def rehearsal_fixture() -> dict[str, Path]:
    from filelock import FileLock

    import rehearsal_fixtures

    benchmarks = SHARED_BENCHMARKS if (SHARED_BENCHMARKS / "mt_bench" / "question.jsonl").exists() else None
    real_gguf = rehearsal_fixtures.real_smollm2_gguf()
    digest = hashlib.sha256(Path(rehearsal_fixtures.__file__).read_bytes())
    digest.update(f"{benchmarks}|{real_gguf}|{real_gguf and real_gguf.stat().st_size}".encode())
    root = Path(tempfile.gettempdir()) / f"salsa-rehearsal-{getpass.getuser()}" / digest.hexdigest()[:16]
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        paths = rehearsal_fixtures.build(root, benchmarks)
    return {**paths, "benchmarks": benchmarks}
