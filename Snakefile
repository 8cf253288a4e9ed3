# SALSA: RLHF with a model-soup KL reference, compared with a plain SFT reference.
# data -> base model -> SFT x seeds -> soup -> reward model -> PPO -> evaluate -> tables
import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config/config.yaml")


validate(config, "config/schema.yaml")
# What the schema cannot say (model names, sweeps, soup weights, paths): refused before any job.
sys.path.insert(0, os.path.join(workflow.basedir, "src"))
from salsa.config_check import ConfigError, check_config

try:
    check_config(config, os.path.join(workflow.basedir, "config/schema.yaml"))
except ConfigError as err:
    sys.exit(str(err))


include: "rules/common.smk"
include: "rules/jobs.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/reward.smk"
include: "rules/warm.smk"
include: "rules/ppo.smk"
include: "rules/dpo.smk"
include: "rules/evaluate.smk"
include: "rules/tables.smk"
include: "rules/landscape.smk"


rule all:
    input:
        summary_outputs(),
        judge_preflight_targets(),
    default_target: True


# With an API judge: the judges answer before the first GPU or API job starts (rules/jobs.smk).
onstart:
    check_judges_before_any_job(workflow.dag)
