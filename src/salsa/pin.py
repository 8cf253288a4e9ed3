"""`salsa pin`: the commit each Hub input of a run is pinned to, and whether the HF cache holds it.

  salsa pin config/config.yaml config/experiments/llama2-7b.yaml [my.yaml ...]

The files are merged as `snakemake --configfile` merges them. For the base model and every Hub
dataset of `data.hub` it prints the revision the config asks for, the commit the local HF cache
(HF_HUB_CACHE / HF_HOME) holds for it, and, for an input without a revision, the key to add. Run it
after the prefetch of docs/cluster.md ("Pinned inputs"): it exits 1 when an input is unpinned or its
revision is not in the cache, which is what an offline (HF_HUB_OFFLINE=1) run would stop on.
Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import yaml

from salsa.artifacts import StageError
from salsa.model_specs import is_gguf


@dataclasses.dataclass(frozen=True)
class HubInput:
    key: str            # where the id is configured, e.g. data.hub.sft_dataset
    repo_id: str
    repo_type: str      # "model" or "dataset"
    revision: str       # "" when unpinned
    revision_key: str   # the key that pins it


def merged_config(files: list[str]) -> dict:
    from snakemake.utils import update_config

    config: dict = {}
    for name in files:
        try:
            loaded = yaml.safe_load(Path(name).read_text()) or {}
        except OSError as err:
            raise StageError(f"{name}: cannot read ({err.strerror})") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            raise StageError(f"{name}:{mark.line + 1 if mark else '?'}: invalid YAML") from None
        update_config(config, loaded)
    return config


def hub_inputs(config: dict) -> list[HubInput]:
    """The Hub ids a run loads, with the revision each is pinned to (the stages' own defaults applied)."""
    from salsa.config_check import looks_local

    inputs = []
    base = config.get("base_model") or {}
    model = base.get("model") or ""
    if model and not looks_local(model) and not model.startswith("pypi:"):
        repo = model.partition("::")[0] if is_gguf(model) else model
        inputs.append(HubInput("base_model.model", repo, "model", base.get("revision") or "", "base_model.revision"))
    data = config.get("data") or {}
    hub = data.get("hub") or {}
    if data.get("source") != "hub":
        return inputs
    revisions = {}
    for role, default_from in (("sft", None), ("prefs", None), ("prompts", "prefs"), ("ood", "sft")):
        source = hub.get(f"{role}_dataset") or (hub.get(f"{default_from}_dataset") if default_from else "")
        if not source or looks_local(source):
            continue
        revision = hub.get(f"{role}_revision") or ""
        if not revision and default_from and source == hub.get(f"{default_from}_dataset"):
            revision = revisions.get(default_from, "")  # hub_data's default: the same dataset's revision
        revisions[role] = revision
        if any(i.repo_id == source and i.revision == revision for i in inputs):
            continue
        inputs.append(HubInput(f"data.hub.{role}_dataset", source, "dataset", revision, f"data.hub.{role}_revision"))
    return inputs


def cached_commit(item: HubInput) -> str | None:
    """The commit of the cached snapshot at the input's revision (default main), or None."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(item.repo_id, repo_type=item.repo_type, revision=item.revision or None,
                                 local_files_only=True)
    except Exception:  # not cached (or the cache lacks that ref): reported as such
        return None
    return Path(path).name


def report(inputs: list[HubInput]) -> tuple[str, bool]:
    lines, complete = [], True
    for item in inputs:
        commit = cached_commit(item)
        asked = item.revision or "(unpinned: main)"
        if not item.revision:
            complete = False
            fix = f"  -> set {item.revision_key}: {commit}" if commit else f"  -> set {item.revision_key}"
        elif commit is None:
            complete = False
            fix = "  -> not in the HF cache: prefetch it (docs/cluster.md)"
        else:
            fix = ""
        lines.append(f"{item.key}: {item.repo_id} @ {asked}; cached: {commit or 'no'}{fix}")
    return "\n".join(lines) or "no Hub inputs (the embedded task)", complete


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    text, complete = report(hub_inputs(merged_config(args)))
    print(text)
    return 0 if complete else 1


if __name__ == "__main__":
    raise SystemExit(main())
