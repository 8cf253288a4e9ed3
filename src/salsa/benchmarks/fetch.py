"""Stage `fetch_benchmark` (`salsa fetch-benchmarks`): a public benchmark's files, pinned and checksummed.

  salsa fetch-benchmarks --benchmark mt_bench --out DIR                  from the pinned public sources
  salsa fetch-benchmarks --benchmark mt_bench --from-dir PATH --out DIR  from a local copy (same layout)

DIR gets the files in the layout salsa.benchmarks.data reads, SHA256SUMS (`sha256sum -c`
format; the answer and judge stages verify it before reading) and salsa_meta.json (where
each file came from). Sources are pinned to a commit, so a fetch is reproducible:

  Arena-Hard questions and baseline answers   Hugging Face dataset lmarena-ai/arena-hard-auto
  Arena-Hard judge settings (yaml)            GitHub lmarena/arena-hard-auto (not data on the Hub)
  MT-Bench questions, judge prompts, refs     GitHub lm-sys/FastChat fastchat/llm_judge/data

Files with a known sha256 (the GitHub blobs, checked against the copies the tests read)
are verified on every fetch, from either source; a mismatch is an error. Hub files are
pinned by revision and their sha256 recorded at fetch time. Hub downloads go through
huggingface_hub's cache (HF_HOME), so a second fetch needs no network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path

from salsa import artifacts
from salsa.args import arg, parse
from salsa.artifacts import StageError
from salsa.benchmarks import ARENA_V01, ARENA_V2, MT_BENCH

CHECKSUMS = "SHA256SUMS"
ARENA_HUB = "lmarena-ai/arena-hard-auto"
ARENA_HUB_REVISION = "15f3746e21432264ce9b453999bde4f3c946d2e6"
FASTCHAT = "https://raw.githubusercontent.com/lm-sys/FastChat/0e6d3e4beaab66f4d3f93db72541a4abab8af28d"
ARENA_GITHUB_V01 = "https://raw.githubusercontent.com/lmarena/arena-hard-auto/5300089073250578618d513767038f6cbb69ebfa"
ARENA_GITHUB_HEAD = "https://raw.githubusercontent.com/lmarena/arena-hard-auto/196f6b826783b3da7310e361a805fa36f0be83f3"


@dataclasses.dataclass(frozen=True)
class SourceFile:
    path: str                    # where it goes, relative to the benchmark's directory
    origin: str                  # a URL, or "hf://<repo_id>@<revision>/<path in repo>" (a dataset repo)
    sha256: str | None = None    # known content hash, verified on every fetch
    elsewhere: tuple[str, ...] = ()   # other places a local copy may keep it (relative to its folder)

    @property
    def hub(self) -> tuple[str, str, str] | None:
        """(repo_id, revision, filename) of a Hub file, else None."""
        if not self.origin.startswith("hf://"):
            return None
        owner, _, rest = self.origin[5:].partition("/")      # hf://org/name@rev/path/in/repo
        name_at, _, filename = rest.partition("/")
        name, _, revision = name_at.partition("@")
        return f"{owner}/{name}", revision, filename


def _hub(path_in_repo: str) -> str:
    return f"hf://{ARENA_HUB}@{ARENA_HUB_REVISION}/{path_in_repo}"


_JUDGE_CONFIG_V01 = SourceFile("judge_config.yaml", f"{ARENA_GITHUB_V01}/config/judge_config.yaml",
                               "6e001736bacacdb1591ffca7eec953a7089f8f5604872d1ca4f9a6f9de1ee451",
                               elsewhere=("../arena_hard_v0.1/judge_config.yaml", "../config/judge_config.yaml"))

SOURCES: dict[str, tuple[SourceFile, ...]] = {
    MT_BENCH: (
        SourceFile("question.jsonl", f"{FASTCHAT}/fastchat/llm_judge/data/mt_bench/question.jsonl",
                   "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7"),
        SourceFile("judge_prompts.jsonl", f"{FASTCHAT}/fastchat/llm_judge/data/judge_prompts.jsonl",
                   "fd283293406d024f44c174b094ef48031d0687a4682fd3a56b29b138f80281b6"),
        SourceFile("reference_answer/gpt-4.jsonl",
                   f"{FASTCHAT}/fastchat/llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl",
                   "f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f"),
    ),
    ARENA_V01: (
        SourceFile("question.jsonl", _hub("data/arena-hard-v0.1/question.jsonl")),
        SourceFile("model_answer/gpt-4-0314.jsonl", _hub("data/arena-hard-v0.1/model_answer/gpt-4-0314.jsonl")),
        _JUDGE_CONFIG_V01,
    ),
    ARENA_V2: (
        SourceFile("question.jsonl", _hub("data/arena-hard-v2.0/question.jsonl")),
        SourceFile("model_answer/o3-mini-2025-01-31.jsonl",
                   _hub("data/arena-hard-v2.0/model_answer/o3-mini-2025-01-31.jsonl")),
        SourceFile("arena-hard-v2.0.yaml", f"{ARENA_GITHUB_HEAD}/config/arena-hard-v2.0.yaml",
                   "ee68e5c6ac98a79720bf11014fc3f7fc3c3e5899153b3b08efe3db0e174215a0"),
        _JUDGE_CONFIG_V01,      # v2.0's hard_prompt judge system prompt is v0.1's (see salsa.benchmarks.data)
    ),
}
_SUBDIRS = {MT_BENCH: "mt_bench", ARENA_V01: "arena_hard_v0.1", ARENA_V2: "arena_hard_v2.0"}


@dataclasses.dataclass
class FetchConfig:
    """Materialise a public benchmark's files (pinned Hub / upstream sources, or a local copy), with sha256s."""

    benchmark: str = arg(help="which benchmark", choices=list(SOURCES))
    out: str = arg(help="directory to write (the benchmark's files, SHA256SUMS, salsa_meta.json)")
    from_dir: str | None = arg(None, help="copy from this local directory instead (the benchmark's own folder, "
                                          "or a root holding mt_bench/, arena_hard_v0.1/, ...)")
    timeout: float = arg(60.0, help="seconds per download before giving up")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_hub_file(repo_id: str, revision: str, filename: str) -> Path:
    """A dataset repo file at a pinned revision, through huggingface_hub's cache."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision))
    except Exception as err:  # offline, missing file, auth: one line for the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise StageError(f"hub dataset {repo_id}@{revision}: {filename}: {type(err).__name__}: {first}") from None


def download_url(url: str, target: Path, timeout: float) -> None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as handle:
            shutil.copyfileobj(response, handle)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise StageError(f"{url}: download failed ({type(err).__name__}: {err})") from None


def local_root(benchmark: str, from_dir: str) -> Path:
    root = Path(from_dir)
    if not root.is_dir():
        raise StageError(f"{root}: benchmark directory not found (benchmarks.{benchmark}.data_dir)")
    nested = root / _SUBDIRS[benchmark]
    return nested if nested.is_dir() and not (root / SOURCES[benchmark][0].path).exists() else root


def fetch(benchmark: str, out: Path, from_dir: str | None = None, timeout: float = 60.0) -> list[dict]:
    """Write the benchmark's files into ``out``; return one provenance row per file."""
    root = local_root(benchmark, from_dir) if from_dir else None
    rows = []
    for source in SOURCES[benchmark]:
        target = out / source.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if root is not None:
            candidates = [root / source.path, *(root / other for other in source.elsewhere)]
            origin = next((c for c in candidates if c.is_file()), candidates[0])
            if not origin.is_file():
                raise StageError(f"{origin}: file not found (a {benchmark} copy needs {source.path})")
            shutil.copyfile(origin, target)
            origin = os.path.normpath(origin)
        elif source.hub:
            shutil.copyfile(download_hub_file(*source.hub), target)
            origin = source.origin
        else:
            download_url(source.origin, target, timeout)
            origin = source.origin
        digest = sha256_of(target)
        if source.sha256 and digest != source.sha256:
            raise StageError(f"{origin}: sha256 {digest} differs from the pinned {source.sha256} "
                             f"(a modified or different copy of {source.path})")
        rows.append({"path": source.path, "origin": origin, "sha256": digest, "pinned": bool(source.sha256)})
    return rows


def write_checksums(directory: Path, rows: list[dict]) -> None:
    (directory / CHECKSUMS).write_text("".join(f"{row['sha256']}  {row['path']}\n" for row in rows))


def verify_checksums(directory: str | Path) -> None:
    """If ``directory`` holds SHA256SUMS, every file listed must match it."""
    directory = Path(directory)
    listing = directory / CHECKSUMS
    if not listing.exists():
        return
    for lineno, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        path = directory / name
        if not path.is_file():
            raise StageError(f"{listing}:{lineno}: {name} is missing")
        if sha256_of(path) != digest:
            raise StageError(f"{path}: sha256 differs from {listing}:{lineno} (the file changed after it was "
                             f"fetched; fetch again)")


def main(argv: list[str] | None = None) -> None:
    config = parse(FetchConfig, argv)
    with artifacts.atomic_dir(config.out) as tmp:
        rows = fetch(config.benchmark, tmp, config.from_dir, config.timeout)
        write_checksums(tmp, rows)
        artifacts.write_metadata(tmp, "fetch_benchmark", config, None, extra={"files": rows})
    source = config.from_dir or "pinned public sources"
    print(f"fetch_benchmark: {len(rows)} {config.benchmark} files from {source} -> {config.out}")


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
