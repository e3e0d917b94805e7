# One virtual environment in the checkout. constraints.txt pins every package of a known-good
# install (torch 2.14.1 / torchvision 0.29.1 among them), so a fresh machine resolves quickly
# to the same set; refresh it with `.venv/bin/pip freeze --exclude-editable > constraints.txt`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench gpu-check clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/lotterylab run

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check lotterylab tests benchmarks examples
	$(BIN)/ruff format --check lotterylab tests benchmarks examples

# every figure of benchmarks/README.md; about an hour on a 2-core machine
bench: install
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_batched.py
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_cavity.py
	$(BIN)/python benchmarks/bench_pruning.py
	$(BIN)/python benchmarks/bench_ntk.py
	$(BIN)/python benchmarks/bench_ray.py
	$(BIN)/python benchmarks/bench_analyze.py
	$(BIN)/python benchmarks/collect.py

# every CUDA path checked and the GPU figures written to benchmarks/results-gpu.json (< 10 min
# on one GPU); on a machine without one: make gpu-check ARGS="--device cpu --quick"
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) results
