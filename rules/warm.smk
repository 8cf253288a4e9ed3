# WARM: reward-model replicas reward/<name> (the reward_model block overridden by
# reward_models.<name>, e.g. another seed) and their weight-averaged soups reward_soup/<name>,
# averaged by the soup code and renormalised. A PPO method picks one with `reward:`.
use rule reward_model as reward_replica with:
    input:
        data=result("data"),
        init=lambda w: model_dir(reward_settings(w.name)["init"]),
        policy=lambda w: model_dir(reward_settings(w.name).get("normalize_policy", reward_settings(w.name)["init"])),
        src=src("reward", "training", "distributed", "modeling", "generation"),
        head=reward_probe_head(),
    output:
        directory(result("reward", "{name}")),
    wildcard_constraints:
        name="[A-Za-z0-9_.-]+",
    params:
        init=lambda w: model_path(reward_settings(w.name)["init"]),
        args=lambda w: cli({**{k: v for k, v in config["ppo"].get("params", {}).items()
                               if k in ("max_new_tokens", "temperature")}, **reward_settings(w.name)}),
        head=init_head_flag(),
    log:
        result("logs", "reward", "{name}.log"),
    benchmark:
        result("benchmarks", "reward", "{name}.tsv")


rule reward_soup:
    input:
        ingredients=lambda w: [reward_dir(r) for r in reward_soup_settings(w.soup)[0]],
        data=result("data"),
        policy=model_dir(config["reward_model"].get("normalize_policy", config["reward_model"]["init"])),
        src=src("reward_soup", "soup", "reward", "distributed", "modeling", "generation"),
    output:
        directory(result("reward_soup", "{soup}")),
    params:
        weights=lambda w: " ".join(map(str, reward_soup_settings(w.soup)[1])),
        args=reward_normalization_args(config["reward_model"]),
    threads: THREADS
    log:
        result("logs", "reward_soup", "{soup}.log"),
    benchmark:
        result("benchmarks", "reward_soup", "{soup}.tsv")
    resources:
        # one process on one device (average, then sample the policy to renormalise): evaluate's resources
        # unless resources.reward_soup says otherwise, never the reward model's multi-GPU training request
        **stage_resources(bench_stage("reward_soup", "evaluate")),
    conda:
        conda_env(bench_stage("reward_soup", "evaluate"))
    shell:
        "exec python -m salsa.reward_soup --inputs {input.ingredients} --weights {params.weights} --data {input.data}"
        " --normalize-policy {input.policy} --out {output} --threads {threads} {params.args} > {log} 2>&1"
