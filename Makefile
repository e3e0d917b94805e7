# One virtual environment in the checkout; torch/torchvision are pinned in pyproject.toml.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/lotterylab run

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check lotterylab tests benchmarks

clean:
	rm -rf $(VENV) results
