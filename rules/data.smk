rule prepare_data:
    input:
        src("data", "task"),
    output:
        directory(result("data")),
    params:
        args=cli(config["data"], skip={"source"}),
    log:
        result("logs", "prepare_data.log"),
    benchmark:
        result("benchmarks", "prepare_data.tsv")
    resources:
        mem_mb=resources_for("prepare_data", "mem_mb"),
        runtime=resources_for("prepare_data", "runtime"),
    conda:
        "../envs/salsa.yaml"
    shell:
        "python -m salsa.data --out {output} {params.args} > {log} 2>&1"
