"""Stage `benchmark_answer`: a model's answers to a benchmark, in the upstream answer format.

  python -m salsa.benchmarks.answer --model DIR --benchmark mt_bench --data-dir PATH --out FILE

Writes FILE (JSON lines, atomically) and FILE.meta.json (salsa_meta-style provenance).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from salsa import artifacts
from salsa.args import arg, parse
from salsa.artifacts import StageError
from salsa.benchmarks import BENCHMARKS
from salsa.benchmarks.answer_generation import generate_answers
from salsa.benchmarks.data import load_benchmark
from salsa.benchmarks.files import write_jsonl


@dataclasses.dataclass
class AnswerConfig:
    """Generate a model's answers to MT-Bench, Arena-Hard or the embedded-task benchmarks."""

    model: str = arg(help="model directory (AutoModelForCausalLM + tokenizer with a chat template)")
    benchmark: str = arg(help="which benchmark", choices=list(BENCHMARKS))
    out: str = arg(help="answers file to write (JSON lines, upstream answer format)")
    data_dir: str | None = arg(None, help="benchmark directory in the upstream layout (or a root holding "
                                          "mt_bench/, arena_hard_v0.1/, ...); for embedded_*: the prepared "
                                          "data dir (eval_id/, task.json)")
    hub_dataset: str | None = arg(None, help="Hugging Face dataset id to read the benchmark from instead "
                                              "(e.g. lmarena-ai/arena-hard-auto)")
    hub_revision: str | None = arg(None, help="revision of --hub-dataset")
    hub_subdir: str | None = arg(None, help="folder of --hub-dataset holding question.jsonl etc. "
                                             "(e.g. data/arena-hard-v0.1)")
    categories: list[str] = arg([], help="Arena-Hard v2.0 categories to answer (default: hard_prompt, "
                                         "as upstream scores by default)")
    seed: int = arg(0, help="sampling seed (temperature > 0 categories)")
    max_questions: int | None = arg(None, help="answer only the first N questions (quick runs)")
    max_new_tokens: int | None = arg(None, help="cap on new tokens per turn (upstream: 1024 MT-Bench, "
                                                "4096 Arena-Hard, 32 embedded)")
    temperature: float | None = arg(None, help="override every category's temperature")
    batch_size: int = arg(16, help="prompts per generate() call")
    model_id: str | None = arg(None, help="model name written into the answers (default: the model dir's name)")
    device: str = arg("auto", help="torch device ('auto': cuda if available, else cpu)")
    threads: int | None = arg(None, help="torch CPU threads (default: torch's choice; 1 for tiny models on CPU)")
    progress: bool = arg(True, help="show progress bars")

    def validate(self) -> None:
        if self.max_questions is not None and self.max_questions < 1:
            raise ValueError("--max-questions must be >= 1")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError("--max-new-tokens must be >= 1")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")


def load_policy(model_dir: str, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from salsa.judges.local import pick_device

    if not Path(model_dir).is_dir():
        raise StageError(f"{model_dir}: model directory not found")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not getattr(tokenizer, "chat_template", None):
        raise StageError(f"{model_dir}: tokenizer has no chat template")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").to(pick_device(device)).eval()
    return model, tokenizer


def default_threads(model) -> int | None:
    """One CPU thread for tiny models: thread hand-offs cost more than their matmuls (5x on 2 cores)."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    return 1 if on_cpu and sum(p.numel() for p in model.parameters()) < 20_000_000 else None


def main(argv: list[str] | None = None) -> None:
    config = parse(AnswerConfig, argv)
    artifacts.set_threads(config.threads)
    artifacts.seed_everything(config.seed)
    data = load_benchmark(config.benchmark, config.data_dir, hub_dataset=config.hub_dataset,
                          hub_revision=config.hub_revision, hub_subdir=config.hub_subdir,
                          categories=tuple(config.categories), need_judge_settings=False)
    questions = data.questions[:config.max_questions] if config.max_questions else data.questions
    if not questions:
        raise StageError(f"{config.benchmark}: no questions to answer")
    model, tokenizer = load_policy(config.model, config.device)
    artifacts.set_threads(config.threads or default_threads(model))
    model_id = config.model_id or Path(config.model).resolve().name
    started = time.time()
    records = generate_answers(model, tokenizer, config.benchmark, questions, model_id, seed=config.seed,
                               batch_size=config.batch_size, cap=config.max_new_tokens,
                               temperature_override=config.temperature, progress=config.progress)
    write_jsonl(config.out, records)
    artifacts.write_json(f"{config.out}.meta.json", {
        "stage": "benchmark_answer", "seed": config.seed, "config": config, "model_id": model_id,
        "n_answers": len(records), "seconds": round(time.time() - started, 2),
        "packages": artifacts.package_versions(), "git_commit": artifacts.git_commit()})
    print(f"benchmark_answer: {len(records)} {config.benchmark} answers of {model_id} -> {config.out}")


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
