.DEFAULT_GOAL := help
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install demo plan test lint format latency bench table status measure measure-bench table-bench walk overhead calibrate clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install ablate with dev extras (no-op when up to date)

# the demo: the experiment preset conf/experiment/demo.yaml (baseline added by the sweep + RALA
# after the Detect inputs, embedded data, seeds 0-2, all fine-tuning one base run trained first; two jobs at
# a time with one thread each). DEMO="experiment=demo seed=0" narrows it; any preset or overrides work.
DEMO ?= experiment=demo

demo: install  ## a small real ablation on the embedded data (baseline + RALA, 3 seeds), then the table
	@start=$$(date +%s); \
	$(BIN)/python -m ablate $(DEMO) results.dir=$(RESULTS) hydra.callbacks.sweep_summary.table=false -m; \
	status=$$?; \
	$(BIN)/python -m ablate.report --results $(RESULTS) || status=$$?; \
	echo "demo finished in $$(( $$(date +%s) - start )) s"; exit $$status

EXPERIMENT ?= demo
plan: install  ## the plan of a preset, run nothing: jobs, cached ones, wall-time estimate (EXPERIMENT=attn_zoo, ARGS="seed=0")
	$(BIN)/python -m ablate experiment=$(EXPERIMENT) $(ARGS) results.dir=$(RESULTS) dry_run=true -m

test: install  ## run the test suite
	$(BIN)/python -m pytest

lint: install  ## ruff check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install  ## ruff fix + format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

latency: install  ## per-module CPU forward latency at C=128, 80x80
	$(BIN)/python -m ablate.benchmarks.module_latency

bench: install  ## module complexity benchmark (all modules + timm/ultralytics peers) -> results/bench
	$(BIN)/python -m ablate.benchmarks.complexity

RESULTS ?= results
WHERE ?=
table: install  ## tables + figures from results/ (RESULTS=dir, WHERE="dataset=shapes attn=rala,fla", TABLE_ARGS="--ci bootstrap --correction bh")
	$(BIN)/python -m ablate.report --results $(RESULTS) $(foreach w,$(WHERE),--where $(w)) $(TABLE_ARGS)

status: install  ## per sweep under RESULTS: finished, failed (with the error), missing, and the command that completes it
	$(BIN)/python -m ablate.status --results $(RESULTS)

BACKEND ?= torch
measure: install  ## the measurement phase: latency of every architecture under RESULTS, side by side (BACKEND="torch onnxruntime")
	$(BIN)/python -m ablate.measure --results $(RESULTS) --backend $(BACKEND) $(foreach w,$(WHERE),--where $(w))

measure-bench: install  ## the measurement phase twice back to back on RESULTS: ratio agreement, overhead, ranking
	$(BIN)/python -m ablate.benchmarks.phase_agreement --results $(RESULTS) --backend $(BACKEND)

SEEDS ?= 5
JOBS ?= 2
ARGS ?=
calibrate: install  ## baseline over SEEDS seeds per dataset: spread and detectable Δ (ARGS="dataset=shapes ...")
	$(BIN)/python -m ablate.calibrate --seeds $(SEEDS) --jobs $(JOBS) --results $(RESULTS) $(ARGS)

fidelity: install  ## the quick protocol's Δs against train=reference on the study's datasets (ARGS="--datasets shapes_small --dry-run")
	$(BIN)/python -m ablate.fidelity --results $(RESULTS) --jobs $(JOBS) $(ARGS)

walk: install  ## the walk of one run's experiment from execute: stays, files, climbs back
	$(BIN)/python -m ablate.benchmarks.run_walk

table-bench: install  ## time make table's work on 10,000 synthetic records
	$(BIN)/python -m ablate.benchmarks.table_timing

overhead: install  ## sweep orchestration overhead per job (launch -> first training step)
	$(BIN)/python -m ablate.benchmarks.overhead

.PHONY: gpu-check gpu-wheels
gpu-check: install  ## on a CUDA machine: AMP training of every module, autocast precision, CUDA latency, GPU tests (docs/gpu.md)
	$(BIN)/python -m ablate.gpu_check --out $(RESULTS)/gpu-check

gpu-wheels: install  ## the cp312 wheels a lent GPU machine needs (.gpu-wheels/) and the device command (docs/gpu.md)
	$(BIN)/python -m ablate.gpu.wheels

clean:  ## remove generated results (keeps .venv)
	rm -rf results/* .pytest_cache
