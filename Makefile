# Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A bare `torch` in a fresh venv pulls a multi-GB CUDA build; pin the CPU wheel first.
# GPU machines: make test TORCH_SPEC="torch==2.13.0 --index-url ..."
TORCH_SPEC ?= torch==2.13.0
PYTEST_WORKERS ?= 2

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/unetkit demo

test: $(VENV)/.installed
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --durations=15

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks

bench: $(VENV)/.installed
	@echo "see benchmarks/README.md: each script takes --data ../shared/data/..."

clean:
	rm -rf $(VENV) demo-output runs
