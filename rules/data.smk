rule prepare_data:
    input:
        src("data", "task", *(["hub_data"] if data_source() == "hub" else [])),
    output:
        directory(result("data")),
    params:
        args=data_args(),
    log:
        result("logs", "prepare_data.log"),
    benchmark:
        result("benchmarks", "prepare_data.tsv")
    resources:
        **stage_resources("prepare_data"),
    conda:
        conda_env("prepare_data")
    shell:
        launcher("prepare_data") + " --out {output} {params.args} > {log} 2>&1"
