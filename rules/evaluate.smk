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


# Downloads run where Snakemake runs (a cluster's login node has the network its compute nodes may lack); so do
# API judges and their preflight, unless resources.bench_judge.local is false (the preflight follows the judges).
# No job waits for judge_preflight (its check and bill, for `rule all`): the Snakefile's onstart checks the
# judges before the first GPU or API job.
localrules: fetch_benchmark


if judge_runs_locally():

    localrules: evaluate_judge, judge_preflight


rule judge_preflight:
    input:
        src=src("judges.preflight", "judges.openai_judge"),
    output:
        result("judge_preflight", "ok.json"),
    params:
        plan=shlex.quote(json.dumps(judge_preflight_plan(), sort_keys=True)),
        # recorded in ok.json: a run judging on the cluster starts its GPU jobs after a check made there
        checked_on="snakemake-host" if judge_runs_locally() else "cluster",
    log:
        result("logs", "judge_preflight.log"),
    priority: 100
    resources:
        **stage_resources("bench_fetch"),
    conda:
        "../envs/salsa.yaml"
    shell:
        "python -m salsa.judges.preflight --plan {params.plan} --checked-on {params.checked_on} --out {output}"
        " > {log} 2>&1"
        " || {{ cat {log} >&2; exit 1; }}"


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
        # requests in flight: the job's share of the global api_requests budget (Snakemake may lower it)
        concurrency=lambda w, resources: f"--concurrency {resources.api_requests}" if api_requests(w.benchmark) else "",
    threads: THREADS
    log:
        result("logs", "bench", "{benchmark}", "{model}", "judge.log"),
    benchmark:
        result("benchmarks", "bench", "{benchmark}", "{model}", "judge.tsv")
    resources:
        **stage_resources("bench_judge"),
        api_requests=lambda w: api_requests(w.benchmark),
    conda:
        conda_env("bench_judge")
    shell:
        "exec python -m salsa.benchmarks.judge --answers {input.answers} --benchmark {wildcards.benchmark}"
        " --judge {params.judge} --data-dir {input.data} --out {output} --seed {params.seed}"
        " --threads {threads} {params.baseline} {params.judge_model} {params.args} {params.concurrency} > {log} 2>&1"
