# segmia: two commands for a newcomer on a fresh machine.
#   make demo   set up .venv (pinned) and run the demo pipeline on embedded synthetic data
#   make test   set up .venv (pinned) and run the test suite (what CI runs)
#   make rehearsal  the paper config's studies on replica datasets, on a CPU (results/rehearsal/)
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.segmia-installed
CORES ?= all
# jobs call "python -m segmia": the venv's python must come first
export PATH := $(BIN):$(PATH)

.PHONY: venv demo test test-fast lint format report dry-run clean-demo rehearsal

venv: $(STAMP)

$(STAMP): envs/requirements.txt envs/requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r envs/requirements.txt -r envs/requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml
	@echo "Report: make report  (writes results/demo/report.html)"

# SEEDS="0" for one seed (what CI runs); the paper config's three seeds by default
rehearsal: $(STAMP)
	$(BIN)/python -m segmia rehearsal --cores $(CORES) $(if $(SEEDS),--seeds $(SEEDS))

report: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml --report results/demo/report.html

dry-run: $(STAMP)
	$(BIN)/snakemake -n --cores all

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check workflow tests benchmarks
	$(BIN)/ruff format --check workflow tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --configfile config/demo.yaml

format: $(STAMP)
	$(BIN)/ruff check --fix workflow tests benchmarks
	$(BIN)/ruff format workflow tests benchmarks
	$(BIN)/snakefmt Snakefile workflow/rules

clean-demo:
	rm -rf results/demo
