rule reward_model:
    input:
        data=result("data"),
        init=lambda w: model_dir(in_replicate(config["reward_model"]["init"], wildcard_replicate(w.rp))),
        policy=lambda w: model_dir(in_replicate(config["reward_model"].get("normalize_policy",
                                                                           config["reward_model"]["init"]),
                                                wildcard_replicate(w.rp))),
        src=src("reward", "training", "modeling", "generation"),
        preflight=judge_preflight_gate("reward_model"),
    output:
        directory(result("{rp}reward_model")),
    params:
        init=lambda w: model_path(in_replicate(config["reward_model"]["init"], wildcard_replicate(w.rp))),
        # normalisation samples are drawn as PPO draws its rollouts, unless set explicitly;
        # replicate r redraws the reward model (seed + r - 1)
        args=lambda w: cli({**{k: v for k, v in config["ppo"].get("params", {}).items()
                               if k in ("max_new_tokens", "temperature")}, **config["reward_model"],
                            "seed": config["reward_model"].get("seed", 0) + (wildcard_replicate(w.rp) or 1) - 1}),
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
        " --out {output} --threads {threads} {params.args} > {log} 2>&1"
