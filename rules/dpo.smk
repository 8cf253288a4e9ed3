# DPO-family runs (dpo, cdpo, ipo) against any reference; the reference's log-probs of every
# preference pair are their own cached artifact, shared by every beta and loss using that reference.
rule dpo_reference:
    input:
        data=result("data"),
        model=lambda w: model_dir(w.ref),
        src=src("dpo_reference", "distributed", "modeling", "reward"),
    output:
        directory(result("dpo_ref", "{ref}")),
    wildcard_constraints:
        ref=r"base|sft/[A-Za-z0-9_.-]+|soup/[A-Za-z0-9_.-]+",
    params:
        model=lambda w: model_path(w.ref),
        args=cli(dpo_reference_precision()),
    threads: THREADS
    log:
        result("logs", "dpo_ref", "{ref}.log"),
    benchmark:
        result("benchmarks", "dpo_ref", "{ref}.tsv")
    resources:
        **stage_resources("dpo_reference"),
    conda:
        conda_env("dpo_reference")
    shell:
        launcher("dpo_reference") + " --model {params.model} --data {input.data} --out {output}"
        " --threads {threads} {params.args} > {log} 2>&1"


rule dpo:
    input:
        data=result("data"),
        policy=lambda w: model_dir(DPO_METHODS[w.method]["init"]),
        reference=lambda w: model_dir(DPO_METHODS[w.method]["reference"]),
        reference_logprobs=lambda w: result("dpo_ref", DPO_METHODS[w.method]["reference"]),
        src=src("dpo", "dpo_reference", "training", "distributed", "modeling", "reward", "ppo", "ppo_models"),
    output:
        directory(result("dpo", "{method}", "seed{seed}")),
    params:
        policy=lambda w: model_path(DPO_METHODS[w.method]["init"]),
        reference=lambda w: model_path(DPO_METHODS[w.method]["reference"]),
        args=lambda w: cli(DPO_METHODS[w.method]["params"]),
    threads: THREADS
    log:
        result("logs", "dpo", "{method}", "seed{seed}.log"),
    benchmark:
        result("benchmarks", "dpo", "{method}", "seed{seed}.tsv")
    resources:
        **stage_resources("dpo"),
    conda:
        conda_env("dpo")
    shell:
        launcher("dpo") + " --policy {params.policy} --reference {params.reference}"
        " --reference-logprobs {input.reference_logprobs} --data {input.data} --out {output}"
        " --seed {wildcards.seed} --threads {threads} {params.args} > {log} 2>&1"
