"""The `salsa` command: a dispatcher of subcommands to module mains.

  salsa score mt-bench --judgments FILE
  salsa score arena-hard --judgments FILE [--baseline NAME]
  salsa answer ... / salsa judge ...     (the benchmark stages, same flags as python -m)
  salsa fetch-benchmarks --benchmark mt_bench --out DIR
  salsa pin config/config.yaml config/experiments/llama2-7b.yaml   (Hub revisions and the HF cache)
  salsa plan --profile profiles/slurm --configfile ...   (snakemake -n: GPU-hours, memory, disk, judges' bill)

To add a subcommand, map its name to a module with ``main(argv)`` in SUBCOMMANDS; the
module is imported only when its subcommand runs, so `salsa --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

from salsa import artifacts

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "score": ("salsa.benchmarks.show_scores", "print MT-Bench / Arena-Hard tables from saved judgments"),
    "answer": ("salsa.benchmarks.answer", "generate a model's benchmark answers"),
    "judge": ("salsa.benchmarks.judge", "judge benchmark answers; write judgments.jsonl + scores.json"),
    "fetch-benchmarks": ("salsa.benchmarks.fetch", "download a public benchmark's files (pinned, sha256-checked)"),
    "pin": ("salsa.pin", "the commit each Hub model / dataset of a config is pinned to, and whether it is cached"),
    "plan": ("salsa.plan", "before submitting: GPU-hours, memory per GPU and disk per rule, and the API judges' bill (snakemake -n)"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: salsa COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in sorted(SUBCOMMANDS.items())]
    lines += ["", "salsa COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"salsa: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return artifacts.run_main(module.main, rest)


if __name__ == "__main__":
    raise SystemExit(main())
