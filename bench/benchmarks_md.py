"""Shared by the bench scripts: update one section of BENCHMARKS.md in place."""

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_section(section: str, markdown: str) -> None:
    """Replace the section whose heading is ``section`` (or append it); leave the others alone."""
    path = REPO / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(section)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + markdown
    else:
        following = text.find("\n## ", start + len(section))
        text = text[:start] + markdown + (text[following + 1:] if following >= 0 else "")
    path.write_text(text)


def publish(section: str, markdown: str, results: dict, json_path: Path | None, write: bool) -> None:
    """Print the section; optionally keep the raw timings as JSON and write the section into BENCHMARKS.md."""
    print(markdown)
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))
    if write:
        write_section(section, markdown)
