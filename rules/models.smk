rule base_model:
    input:
        data=result("data"),
        src=src("base", "sft", "training", "distributed", "modeling"),
    output:
        directory(result("base_model")),
    params:
        args=cli(config["base_model"]),
    threads: THREADS
    log:
        result("logs", "base_model.log"),
    benchmark:
        result("benchmarks", "base_model.tsv")
    resources:
        **stage_resources("base_model"),
    conda:
        conda_env("base_model")
    shell:
        launcher("base_model") + " --tokenizer {input.data}/tokenizer --data {input.data}/pretrain"
        " --out {output} --threads {threads} {params.args} > {log} 2>&1"


rule sft:
    input:
        data=result("data"),
        base=result("base_model"),
        src=src("sft", "training", "distributed", "modeling"),
    output:
        directory(result("{rp}sft", "{sft}")),
    params:
        model=lambda w: base_model_path(),  # input.base, or the Hub id / local path of a real model
        args=lambda w: cli(sft_settings(w.sft, wildcard_replicate(w.rp))),
    threads: THREADS
    log:
        result("logs", "{rp}sft", "{sft}.log"),
    benchmark:
        result("benchmarks", "{rp}sft", "{sft}.tsv")
    resources:
        **stage_resources("sft"),
    conda:
        conda_env("sft")
    shell:
        launcher("sft") + " --model {params.model} --data {input.data}/sft --out {output}"
        " --threads {threads} {params.args} > {log} 2>&1"


rule soup:
    input:
        ingredients=lambda w: [model_dir(in_replicate(ref, wildcard_replicate(w.rp)))
                               for ref in soup_settings(w.soup)[0]],
        src=src("soup"),
    output:
        directory(result("{rp}soup", "{soup}")),
    params:
        weights=lambda w: " ".join(map(str, soup_settings(w.soup)[1])),
    log:
        result("logs", "{rp}soup", "{soup}.log"),
    benchmark:
        result("benchmarks", "{rp}soup", "{soup}.tsv")
    resources:
        **stage_resources("soup"),
    conda:
        "../envs/salsa.yaml"
    shell:
        "exec python -m salsa.soup --inputs {input.ingredients} --weights {params.weights} --out {output}"
        " > {log} 2>&1"
