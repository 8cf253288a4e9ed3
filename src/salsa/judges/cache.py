"""A disk cache of judge replies, one small JSON file per request.

Keyed by sha256 of (model, messages, temperature, max_tokens), so any run that asks
the same thing, in any process, reuses the reply. Files are written atomically
(temp + rename), which makes concurrent writers safe; the API key is never stored.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from salsa import artifacts


class JudgmentCache:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"   # sharded: no directory with 100k files

    def get(self, key: str) -> dict | None:
        try:
            record = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None   # a torn or foreign file is just a miss
        return record if isinstance(record, dict) and isinstance(record.get("text"), str) else None

    def put(self, key: str, model: str, messages: list[dict], temperature: float, max_tokens: int,
            text: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"key": key, "model": model, "temperature": temperature, "max_tokens": max_tokens,
                  "messages": messages, "text": text, "created": time.time()}
        with artifacts.atomic_text_file(path, prefix=f".{key[:8]}.") as handle:
            json.dump(record, handle, ensure_ascii=False)

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*/*.json")) if self.directory.exists() else 0
