rule evaluate:
    input:
        model=lambda w: model_dir(w.model),
        reference=lambda w: [model_dir(r) for r in [model_reference(w.model)] if r],
        first_sft=lambda w: model_dir(first_sft(w.model)),
        reward=lambda w: reward_dir(split_replicate(w.model)[0]),
        data=result("data"),
        src=src("evaluate", "modeling", "generation"),
    output:
        directory(result("eval", "{model}")),
    params:
        model=lambda w: model_path(w.model),
        reference=lambda w: model_dir(model_reference(w.model)) if model_reference(w.model) else "",
        args=cli(config.get("evaluate", {})),
    threads: THREADS
    log:
        result("logs", "eval", "{model}.log"),
    benchmark:
        result("benchmarks", "eval", "{model}.tsv")
    resources:
        **stage_resources("evaluate"),
    conda:
        conda_env("evaluate")
    shell:
        launcher("evaluate") + " --model {params.model} --reference '{params.reference}'"
        " --first-sft {input.first_sft} --reward-model {input.reward} --data {input.data} --out {output}"
        " --threads {threads} {params.args} > {log} 2>&1"


def benchmark_setting(benchmark, key, default=None):
    return config.get("benchmarks", {}).get(benchmark, {}).get(key, default)


def benchmark_data(benchmark):
    """Embedded protocols read the prepared data; the public ones a configured directory."""
    if benchmark.startswith("embedded_"):
        return result("data")
    return benchmark_setting(benchmark, "data_dir", "../shared/benchmarks")


rule evaluate_answers:
    input:
        model=lambda w: model_dir(w.model),
        data=lambda w: [result("data")] if w.benchmark.startswith("embedded_") else [],
        src=src("benchmarks.answer", "benchmarks.answers", "benchmarks.generation"),
    output:
        result("bench", "{benchmark}", "{model}", "answers.jsonl"),
    params:
        model=lambda w: model_path(w.model),
        data=lambda w: benchmark_data(w.benchmark),
        args=lambda w: cli(benchmark_setting(w.benchmark, "answer", {})),
        seed=config.get("evaluate", {}).get("seed", 0),
    threads: THREADS
    log:
        result("logs", "bench", "{benchmark}", "{model}", "answers.log"),
    benchmark:
        result("benchmarks", "bench", "{benchmark}", "{model}", "answers.tsv")
    resources:
        **stage_resources("evaluate"),
    conda:
        conda_env("evaluate")
    shell:
        launcher("evaluate", "benchmarks.answer") + " --model {params.model} --benchmark {wildcards.benchmark}"
        " --data-dir {params.data} --out {output} --seed {params.seed} --threads {threads}"
        " --progress false {params.args} > {log} 2>&1"


def judge_baseline(benchmark, model=""):
    """The baseline's answers; with replicates, the baseline of the judged model's own replicate."""
    baseline = benchmark_setting(benchmark, "baseline")
    if not baseline:
        return []
    return [result("bench", benchmark, in_replicate(baseline, split_replicate(model)[0]), "answers.jsonl")]


rule evaluate_judge:
    input:
        answers=result("bench", "{benchmark}", "{model}", "answers.jsonl"),
        baseline=lambda w: judge_baseline(w.benchmark, w.model),
        reward=lambda w: ([reward_dir(split_replicate(w.model)[0])]
                          if benchmark_setting(w.benchmark, "judge") == "reward" else []),
        src=src("benchmarks.judge", "benchmarks.scoring", "benchmarks.arena_scoring", "benchmarks.protocols"),
    output:
        directory(result("bench", "{benchmark}", "{model}", "judged")),
    params:
        judge=lambda w: benchmark_setting(w.benchmark, "judge"),
        data=lambda w: benchmark_data(w.benchmark),
        baseline=lambda w: " ".join(f"--baseline-answers {p}" for p in judge_baseline(w.benchmark, w.model)),
        judge_model=lambda w: (f"--judge-model {reward_dir(split_replicate(w.model)[0])}"
                               if benchmark_setting(w.benchmark, "judge") == "reward" else ""),
        args=lambda w: cli(benchmark_setting(w.benchmark, "judging", {})),
        seed=config.get("evaluate", {}).get("seed", 0),
    log:
        result("logs", "bench", "{benchmark}", "{model}", "judge.log"),
    benchmark:
        result("benchmarks", "bench", "{benchmark}", "{model}", "judge.tsv")
    resources:
        **stage_resources("evaluate"),
    conda:
        "../envs/salsa.yaml"
    shell:
        "python -m salsa.benchmarks.judge --answers {input.answers} --benchmark {wildcards.benchmark}"
        " --judge {params.judge} --data-dir {params.data} --out {output} --seed {params.seed}"
        " {params.baseline} {params.judge_model} {params.args} > {log} 2>&1"
