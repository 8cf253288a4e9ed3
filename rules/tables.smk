rule tables:
    input:
        evals=[result("eval", m) for m in evaluated_models()],
        runs=[model_dir(r) for r in ppo_run_ids()],
        judged=[result("bench", b, m, "judged") for b in enabled_benchmarks() for m in benchmark_models(b)],
        rewards=[result(r) for r in reward_model_ids()],
        src=src("tables", "stats", "plots", "reward_report", "same_prompts", "benchmarks.win_rate", "matched_kl",
                "preregistration", "summary_sections"),
    output:
        summary=report(result("tables", "summary.md"), category="Summary"),
        csv=report(result("tables", "summary.csv"), category="Summary"),
        endpoints=report(result("tables", "endpoints.csv"), category="Summary"),
        reward_model_pairs=result("tables", "reward_model_pairs.csv"),
        reward_ensembles=result("tables", "reward_ensembles.csv"),
        comparisons=report(result("tables", "comparisons.csv"), category="Summary",
                           caption="../docs/report/comparisons.rst"),
        matched_kl=report(result("tables", "matched_kl.csv"), category="Summary",
                          caption="../docs/report/matched_kl.rst"),
        single_models=report(result("tables", "single_models.csv"), category="Summary",
                             caption="../docs/report/single_models.rst"),
        reward_models=report(result("tables", "reward_models.csv"), category="Summary",
                             caption="../docs/report/reward_models.rst"),
        runs_vs_start=report(result("tables", "runs_vs_start.csv"), category="Summary",
                             caption="../docs/report/runs_vs_start.rst"),
        runs_vs_partner=report(result("tables", "runs_vs_partner.csv"), category="Summary",
                               caption="../docs/report/runs_vs_partner.rst"),
        curves=report(result("tables", "ppo_curves.png"), category="Plots",
                      caption="../docs/report/ppo_curves.rst"),
        frontier=report(result("tables", "frontier.png"), category="Plots",
                        caption="../docs/report/frontier.rst"),
    params:
        models=evaluated_models(),
        baseline=config.get("tables", {}).get("baseline", first_sft()),
        reference_method=config.get("tables", {}).get("reference_method", next(iter(PPO_METHODS))),
        results=lambda w: RESULTS,  # the experiment directory the model ids are relative to
        out=lambda w, output: os.path.dirname(output.summary),
        rewards=reward_model_ids(),
        pairs=" ".join(":".join(p) for p in config.get("tables", {}).get("pairs", [])),
        contrasts=" ".join(":".join(c) for c in config.get("tables", {}).get("contrasts", [])),
        primary=endpoint_spec(config.get("tables", {}).get("primary", {})),
        secondary=" ".join(endpoint_spec(e) for e in config.get("tables", {}).get("secondary", [])),
        alpha=config.get("tables", {}).get("primary", {}).get("alpha", 0.05),
    log:
        result("logs", "tables.log"),
    resources:
        **stage_resources("tables"),
    conda:
        "../envs/salsa.yaml"
    shell:
        "exec python -m salsa.tables --results {params.results} --models {params.models} --baseline {params.baseline}"
        " --reference-method {params.reference_method} --reward-models {params.rewards} --pairs {params.pairs}"
        " --contrasts {params.contrasts} --primary {params.primary} --secondary {params.secondary}"
        " --alpha {params.alpha} --out {params.out} > {log} 2>&1"
