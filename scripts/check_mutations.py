"""Mutation check for the statistics (issue 19): apply each wrong-code mutation, run the tests named beside it,
expect a failure, restore the file. Usage: .venv/bin/python scripts/check_mutations.py [name substring ...]"""
import subprocess, sys, pathlib
ROOT = pathlib.Path(__file__).resolve().parents[1]
M = [
 ("bootstrap_mean at 90%", "src/salsa/stats.py",
  "    lower, upper = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])",
  "    lower, upper = np.quantile(means, [0.05, 0.95])", "tests/test_stats.py"),
 ("matched-KL interval at 80% (one replicate)", "src/salsa/matched_kl.py",
  '"diff_ci": t_quantile(df, level) * se if', '"diff_ci": t_quantile(df, 0.8) * se if', "tests/test_matched_kl.py"),
 ("matched-KL interval at 80% (replicates)", "src/salsa/matched_kl.py",
  "    interval = mean_interval([r[\"diff\"] for _, r in found], level)",
  "    interval = mean_interval([r[\"diff\"] for _, r in found], 0.8)", "tests/test_matched_kl.py"),
 ("landscape paired_interval at 80%", "src/salsa/landscape.py",
  "    tail = (1 - level) / 2", "    tail = 0.1", "tests/test_landscape.py"),
 ("variance share without /seeds (between / (between + within))", "src/salsa/stats.py",
  "    f_obs = seeds * var_replicate_means / var_within", "    f_obs = var_replicate_means / var_within",
  "tests/test_stats.py"),
 ("variance share interval from the wrong F tail", "src/salsa/stats.py",
  '"share_lower": clip(1 - f_high / f_obs)', '"share_lower": clip(1 - f_low / f_obs)', "tests/test_stats.py"),
 ("var_between not floored", "src/salsa/stats.py",
  "    between_var = max(0.0, observed - within_var / n_seeds)", "    between_var = (observed - within_var / n_seeds)",
  "tests/test_tables.py"),
 ("approximate power formula", "src/salsa/stats.py",
  "    return float(brentq(lambda delta: power_two_sided(delta, se, df, level) - power, 0.0, high, xtol=1e-12))",
  "    return high", "tests/test_stats.py"),
 ("degree-0 matched-KL fits accepted", "src/salsa/matched_kl.py",
  "    if all(r.stratum.nunique() == 1 for r in runs.values()):", "    if False:", "tests/test_matched_kl.py"),
 ("level without comparators on both sides accepted", "src/salsa/matched_kl.py",
  "    return bool(kl.min() <= level <= kl.max())", "    return True", "tests/test_matched_kl.py"),
 ("Holm over primary + secondary", "src/salsa/preregistration.py",
  '        out.loc[family, "p_holm"] = stats.holm(out.loc[family, "p"].to_numpy(float))',
  '        out.loc[family, "p_holm"] = stats.holm(out["p"].to_numpy(float))[1:]', "tests/test_preregistration.py"),
 ("Holm over the whole comparisons table again", "src/salsa/tables.py",
  "    return pd.DataFrame(rows)\n\n\ndef shown_metrics",
  "    out = pd.DataFrame(rows)\n    out['p_holm'] = stats.holm(out.p)\n    return out\n\n\ndef shown_metrics",
  "tests/test_tables.py"),
 ("McNemar replaced by an unpaired two-proportion test", "src/salsa/stats.py",
  "    p = float(scipy_stats.binomtest(wins_a, discordant, 0.5).pvalue) if discordant else 1.0",
  "    pa, pb = a.mean(), b.mean(); pooled = (pa + pb) / 2\n"
  "    p = float(2 * scipy_stats.norm.sf(abs(pa - pb) / math.sqrt(2 * pooled * (1 - pooled) / n)))",
  "tests/test_stats.py tests/test_reward_report.py"),
 ("matched KL on a pooled fit across replicates (runs of one replicate as independent)", "src/salsa/matched_kl.py",
  "        if len(replicates) > 1:", "        if False:", "tests/test_matched_kl.py"),
 ("primary adjusted (Holm over all three)", "src/salsa/preregistration.py",
  "    decisive = out.p.where(~family, out.p_holm)", "    decisive = out.p * len(out)", "tests/test_preregistration.py"),
 ("percentile interval printed as ±", "src/salsa/tables.py",
  "            single[f\"{m} (95% CI)\"] = [bracket(v, lo, hi) for v, lo, hi in",
  "            single[f\"{m} (95% CI)\"] = [pm(v, (hi - lo) / 2) for v, lo, hi in", "tests/test_tables.py"),
 ("reward stage ignores --init-head (a fresh head per seed)", "src/salsa/reward.py",
  "        load_head(model, config.init_head)", "        pass", "tests/test_warm.py"),
 ("probe head never trained", "src/salsa/reward_probe.py",
  "        optimizer.step()", "        pass", "tests/test_warm.py"),
]
only = sys.argv[1:]
missed = []
for name, path, old, new, tests in M:
    if only and not any(o in name for o in only):
        continue
    file = ROOT / path
    text = file.read_text()
    assert text.count(old) == 1, (name, old)
    file.write_text(text.replace(old, new))
    try:
        proc = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
                               "-x", *tests.split()], cwd=ROOT, capture_output=True, text=True)
        failed = [l for l in proc.stdout.splitlines() if l.startswith("FAILED")]
        missed += [] if proc.returncode else [name]
        print(f"{'CAUGHT' if proc.returncode else 'MISSED'}: {name} -> {failed[0].split(' - ')[0] if failed else proc.stdout.splitlines()[-1]}", flush=True)
    finally:
        file.write_text(text)
sys.exit(1 if missed else 0)
