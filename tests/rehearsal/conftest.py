"""The rehearsal fixture (rehearsal_fixtures.py), built once per test session and shared by every
rehearsal; under pytest-xdist the workers share one build (a file lock guards it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_BENCHMARKS = REPO.parent / "shared" / "benchmarks"


@pytest.fixture(scope="session")
def rehearsal_fixture(tmp_path_factory) -> dict[str, Path]:
    from filelock import FileLock

    import rehearsal_fixtures

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    benchmarks = SHARED_BENCHMARKS if (SHARED_BENCHMARKS / "mt_bench" / "question.jsonl").exists() else None
    with FileLock(str(shared / "rehearsal-fixture.lock")):
        paths = rehearsal_fixtures.build(shared / "rehearsal-fixture", benchmarks)
    return {**paths, "benchmarks": benchmarks}
