"""The benchmark files on disk: JSON lines and YAML read with `file:line` errors, JSON lines written atomically.

Every other benchmark module reads and writes through these, so a malformed input always
stops with one line naming the file and line (salsa.artifacts.StageError).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from salsa import artifacts
from salsa.artifacts import StageError


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; StageError names file:line on bad input."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StageError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise StageError(f"{path}: is a directory, expected a JSON-lines file") from None
    except UnicodeDecodeError as err:
        raise StageError(f"{path}: not UTF-8 text ({err.reason})") from None
    rows = []
    # split on "\n" only: str.splitlines() would also break at U+2028 etc. inside JSON strings
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise StageError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise StageError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append((lineno, row))
    return rows


def field(row: dict, key: str, kind: type | tuple, where: str) -> Any:
    """row[key] checked for presence and type; ``where`` is "file:line" for the message."""
    if key not in row:
        raise StageError(f"{where}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise StageError(f"{where}: field {key!r} should be {names}, got {type(value).__name__}")
    return value


def read_yaml(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    try:
        payload = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise StageError(f"{path}{line}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(payload, dict):
        raise StageError(f"{path}: expected a YAML mapping")
    return payload


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Write JSON lines atomically (temp file beside the target, then rename)."""
    with artifacts.atomic_text_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
