"""Shared by the bench scripts: update one section of BENCHMARKS.md in place."""

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
