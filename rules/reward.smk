rule reward_model:
    input:
        data=result("data"),
        init=lambda w: model_dir(in_replicate(config["reward_model"]["init"], wildcard_replicate(w.rp))),
        policy=lambda w: model_dir(in_replicate(config["reward_model"].get("normalize_policy",
                                                                           config["reward_model"]["init"]),
                                                wildcard_replicate(w.rp))),
        src=src("reward", "training", "distributed", "modeling", "generation"),
        head=lambda w: reward_probe_head(wildcard_replicate(w.rp)),
    output:
        directory(result("{rp}reward_model")),
    params:
        init=lambda w: model_path(in_replicate(config["reward_model"]["init"], wildcard_replicate(w.rp))),
        # normalisation samples are drawn as PPO draws its rollouts, unless set explicitly;
        # replicate r redraws the reward model (seed + r - 1)
        args=lambda w: cli({**{k: v for k, v in config["ppo"].get("params", {}).items()
                               if k in ("max_new_tokens", "temperature")}, **config["reward_model"],
                            "seed": config["reward_model"].get("seed", 0) + (wildcard_replicate(w.rp) or 1) - 1}),
        head=lambda w: init_head_flag(wildcard_replicate(w.rp)),
    threads: THREADS
    log:
        result("logs", "{rp}reward_model.log"),
    benchmark:
        result("benchmarks", "{rp}reward_model.tsv")
    resources:
        **stage_resources("reward_model"),
    conda:
        conda_env("reward_model")
    shell:
        launcher("reward_model") + " --model {params.init} --normalize-policy {input.policy} --data {input.data}"
        " --out {output} --threads {threads} {params.args}{params.head} > {log} 2>&1"


# WARM's linear probe (reward_probe.enabled): the score head trained alone on the frozen reward-model init,
# the shared start every reward model of the run (reward_model and the reward/<name> replicas) fine-tunes from.
rule reward_probe:
    input:
        data=result("data"),
        init=lambda w: model_dir(in_replicate(config["reward_model"]["init"], wildcard_replicate(w.rp))),
        src=src("reward_probe", "reward", "modeling"),
    output:
        directory(result("{rp}reward_probe")),
    params:
        init=lambda w: model_path(in_replicate(config["reward_model"]["init"], wildcard_replicate(w.rp))),
        args=cli({k: v for k, v in config.get("reward_probe", {}).items() if k != "enabled"}),
    threads: THREADS
    log:
        result("logs", "{rp}reward_probe.log"),
    benchmark:
        result("benchmarks", "{rp}reward_probe.tsv")
    resources:
        **stage_resources(bench_stage("reward_probe", "evaluate")),
    conda:
        conda_env(bench_stage("reward_probe", "evaluate"))
    shell:
        "exec python -m salsa.reward_probe --model {params.init} --data {input.data} --out {output}"
        " --threads {threads} {params.args} > {log} 2>&1"
