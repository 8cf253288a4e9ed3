rule ppo:
    input:
        data=result("data"),
        policy=lambda w: model_dir(in_replicate(PPO_METHODS[w.method]["init"], wildcard_replicate(w.rp))),
        reference=lambda w: model_dir(in_replicate(PPO_METHODS[w.method]["reference"], wildcard_replicate(w.rp))),
        reward=lambda w: reward_dir(PPO_METHODS[w.method].get("reward", "reward_model"), wildcard_replicate(w.rp)),
        src=src("ppo", "ppo_math", "ppo_models", "anchor", "training", "distributed", "modeling", "generation"),
    output:
        directory(result("{rp}ppo", "{method}", "seed{seed}")),
    params:
        args=lambda w: cli(PPO_METHODS[w.method]["params"]),
    threads: THREADS
    log:
        result("logs", "{rp}ppo", "{method}", "seed{seed}.log"),
    benchmark:
        result("benchmarks", "{rp}ppo", "{method}", "seed{seed}.tsv")
    resources:
        **stage_resources("ppo"),
    conda:
        conda_env("ppo")
    shell:
        launcher("ppo") + " --policy {input.policy} --reference {input.reference}"
        " --reward-model {input.reward} --data {input.data} --out {output} --seed {wildcards.seed}"
        " --threads {threads} {params.args} > {log} 2>&1"
