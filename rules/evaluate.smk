rule evaluate:
    input:
        model=lambda w: model_dir(w.model),
        reference=lambda w: [model_dir(r) for r in [model_reference(w.model)] if r],
        first_sft=lambda w: model_dir(first_sft(w.model)),
        reward=lambda w: reward_dir(rep=split_replicate(w.model)[0]),
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
    """Embedded protocols read the prepared data; the public ones their fetched (or copied) files."""
    if benchmark.startswith("embedded_"):
        return result("data")
    return result("benchmark_data", benchmark)


def bench_stage(stage, fallback):
    """resources.<stage> when the config has one, else <fallback>'s (answers load the policy like evaluate)."""
    return stage if stage in config.get("resources", {}) else fallback


def local_judge_model(benchmark):
    """A local judge's model directory is an input: missing, the dry run says so; changed, the judge reruns."""
    model = benchmark_setting(benchmark, "judging", {}).get("judge_model")
    return [model] if benchmark_setting(benchmark, "judge") == "local" and model else []


# Downloads run where Snakemake runs (a cluster's login node has the network its compute nodes may lack).
localrules: fetch_benchmark


rule fetch_benchmark:
    input:
        local=lambda w: [d for d in [benchmark_setting(w.benchmark, "data_dir")] if d],
        src=src("benchmarks.fetch"),
    output:
        directory(result("benchmark_data", "{benchmark}")),
    params:
        source=lambda w: f"--from-dir {benchmark_setting(w.benchmark, 'data_dir')}"
        if benchmark_setting(w.benchmark, "data_dir") else "",
    log:
        result("logs", "bench", "{benchmark}", "fetch.log"),
    benchmark:
        result("benchmarks", "bench", "{benchmark}", "fetch.tsv")
    resources:
        **stage_resources("bench_fetch"),
    conda:
        "../envs/salsa.yaml"
    shell:
        "exec python -m salsa.benchmarks.fetch --benchmark {wildcards.benchmark} {params.source} --out {output}"
        " > {log} 2>&1"


rule evaluate_answers:
    input:
        model=lambda w: model_dir(w.model),
        data=lambda w: benchmark_data(w.benchmark),
        src=src("benchmarks.answer", "benchmarks.answer_generation", "benchmarks.chat_generation", "benchmarks.data",
                "benchmarks.files", "benchmarks.answer_formats"),
    output:
        result("bench", "{benchmark}", "{model}", "answers.jsonl"),
    params:
        model=lambda w: model_path(w.model),
        args=lambda w: cli(benchmark_setting(w.benchmark, "answer", {})),
        seed=config.get("evaluate", {}).get("seed", 0),
    threads: THREADS
    log:
        result("logs", "bench", "{benchmark}", "{model}", "answers.log"),
    benchmark:
        result("benchmarks", "bench", "{benchmark}", "{model}", "answers.tsv")
    resources:
        **stage_resources(bench_stage("bench_answer", "evaluate")),
    conda:
        conda_env(bench_stage("bench_answer", "evaluate"))
    shell:
        launcher(bench_stage("bench_answer", "evaluate"), "benchmarks.answer") + " --model {params.model}"
        " --model-id {wildcards.model} --benchmark {wildcards.benchmark} --data-dir {input.data} --out {output}"
        " --seed {params.seed} --threads {threads} --progress false {params.args} > {log} 2>&1"


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
        data=lambda w: benchmark_data(w.benchmark),
        reward=lambda w: ([reward_dir(rep=split_replicate(w.model)[0])]
                          if benchmark_setting(w.benchmark, "judge") == "reward" else []),
        judge_model=lambda w: local_judge_model(w.benchmark),
        src=src("benchmarks.judge", "benchmarks.judge_protocols", "benchmarks.mt_bench_scoring",
                "benchmarks.arena_hard_scoring", "benchmarks.scores_json", "benchmarks.win_rate", "benchmarks.data",
                "benchmarks.files", "benchmarks.answer_formats"),
    output:
        directory(result("bench", "{benchmark}", "{model}", "judged")),
    params:
        judge=lambda w: benchmark_setting(w.benchmark, "judge"),
        baseline=lambda w: " ".join(f"--baseline-answers {p}" for p in judge_baseline(w.benchmark, w.model)),
        judge_model=lambda w: (f"--judge-model {reward_dir(rep=split_replicate(w.model)[0])}"
                               if benchmark_setting(w.benchmark, "judge") == "reward" else ""),
        args=lambda w: cli(benchmark_setting(w.benchmark, "judging", {})),
        seed=config.get("evaluate", {}).get("seed", 0),
    threads: THREADS
    log:
        result("logs", "bench", "{benchmark}", "{model}", "judge.log"),
    benchmark:
        result("benchmarks", "bench", "{benchmark}", "{model}", "judge.tsv")
    resources:
        **stage_resources("bench_judge"),
    conda:
        conda_env("bench_judge")
    shell:
        "exec python -m salsa.benchmarks.judge --answers {input.answers} --benchmark {wildcards.benchmark}"
        " --judge {params.judge} --data-dir {input.data} --out {output} --seed {params.seed}"
        " --threads {threads} {params.baseline} {params.judge_model} {params.args} > {log} 2>&1"
