rule landscape:
    input:
        ingredients=[model_dir(in_replicate(ref, r)) for r in replicate_numbers() for ref in landscape_pair()],
        reward=[reward_dir(rep=r) for r in replicate_numbers()],
        data=result("data"),
        src=src("landscape", "soup", "evaluate", "modeling", "generation"),
    output:
        directory(result("landscape")),
    params:
        labels=" ".join(f"rep{r}" if r is not None else "sft" for r in replicate_numbers()),
        args=cli(config.get("landscape", {})),
    threads: THREADS
    log:
        result("logs", "landscape.log"),
    benchmark:
        result("benchmarks", "landscape.tsv")
    resources:
        **stage_resources("evaluate"),
    conda:
        conda_env("evaluate")
    shell:
        launcher("evaluate", "landscape") + " --ingredients {input.ingredients} --reward-models {input.reward}"
        " --labels {params.labels} --data {input.data} --out {output} --threads {threads} {params.args} > {log} 2>&1"
