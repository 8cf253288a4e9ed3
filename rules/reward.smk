rule reward_model:
    input:
        data=result("data"),
        init=model_dir(config["reward_model"]["init"]),
        policy=model_dir(config["reward_model"].get("normalize_policy", config["reward_model"]["init"])),
        src=src("reward", "training", "modeling", "generation"),
    output:
        directory(result("reward_model")),
    params:
        # normalisation samples are drawn as PPO draws its rollouts, unless set explicitly
        args=cli({**{k: v for k, v in config["ppo"].get("params", {}).items()
                     if k in ("max_new_tokens", "temperature")}, **config["reward_model"]}) + tracking("reward_model"),
    threads: THREADS
    log:
        result("logs", "reward_model.log"),
    benchmark:
        result("benchmarks", "reward_model.tsv")
    resources:
        **stage_resources("reward_model"),
    conda:
        conda_env("reward_model")
    shell:
        launcher("reward_model") + " --model {input.init} --normalize-policy {input.policy} --data {input.data}"
        " --out {output} --threads {threads} {params.args} > {log} 2>&1"
