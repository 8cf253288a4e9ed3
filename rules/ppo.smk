rule ppo:
    input:
        data=result("data"),
        policy=lambda w: model_dir(PPO_METHODS[w.method]["init"]),
        reference=lambda w: model_dir(PPO_METHODS[w.method]["reference"]),
        reward=lambda w: reward_dir(PPO_METHODS[w.method].get("reward", "reward_model")),
        src=src("ppo", "ppo_math", "training", "modeling", "generation"),
    output:
        directory(result("ppo", "{method}", "seed{seed}")),
    params:
        args=lambda w: cli(PPO_METHODS[w.method]["params"]) + tracking("ppo", w.method, f"seed{w.seed}"),
    threads: THREADS
    log:
        result("logs", "ppo", "{method}", "seed{seed}.log"),
    benchmark:
        result("benchmarks", "ppo", "{method}", "seed{seed}.tsv")
    resources:
        **stage_resources("ppo"),
    conda:
        conda_env("ppo")
    shell:
        launcher("ppo") + " --policy {input.policy} --reference {input.reference}"
        " --reward-model {input.reward} --data {input.data} --out {output} --seed {wildcards.seed}"
        " --threads {threads} {params.args} > {log} 2>&1"
