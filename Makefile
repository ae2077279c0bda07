# tidal_lightning: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST_DEB_DIR := /usr/share/datasets/fashion-mnist

.DEFAULT_GOAL := help
.PHONY: help install data demo test test-fast lint format clean bench gpu-wheels gpu-check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed ## create .venv and install the package with its dev tools

data: ## install real Fashion-MNIST offline (Debian package dataset-fashion-mnist)
	@if [ ! -f $(FMNIST_DEB_DIR)/train-images-idx3-ubyte.gz ]; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; \
	fi
	@ls $(FMNIST_DEB_DIR)/*-ubyte.gz

demo: install data ## TiDAL-M on real Fashion-MNIST, CPU-sized (about 3 minutes on 2 cores), prints the per-cycle table
	$(PY) -m tidal_lightning +experiment=fashion_mnist_cpu

test: install ## the full test suite (what CI runs)
	$(PY) -m pytest -q

test-fast: install ## the tests not marked slow (skips the whole-run tests)
	$(PY) -m pytest -q -m "not slow"

bench: install ## speed benchmark side by side (TD overhead, Lightning vs raw, data path, scoring): bench.json, ~11 min on 2 cores
	$(PY) -m tidal_lightning.bench $(BENCH_ARGS)

gpu-wheels: data ## what the GPU check carries: wheels the GPU machine lacks (.whl/), real Fashion-MNIST (.gpu_data/)
	PY=$(if $(wildcard $(PY)),$(PY),$(PYTHON)) bash scripts/gpu_wheels.sh

gpu-check: ## the GPU check, one command of at most 8 min (GPU_CHECK_OUT=folder; --tiny on a CPU: GPU_CHECK_ARGS=--tiny)
	PYTHON=$(if $(wildcard $(PY)),$(PY),$(PYTHON)) bash scripts/gpu_check.sh $(GPU_CHECK_ARGS) $(or $(GPU_CHECK_OUT),gpu_check)

lint: install ## ruff and mypy
	$(VENV)/bin/ruff check tidal_lightning tests
	$(VENV)/bin/ruff format --check tidal_lightning tests
	$(VENV)/bin/mypy tidal_lightning

format: install ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix tidal_lightning tests
	$(VENV)/bin/ruff format tidal_lightning tests

clean: ## remove the virtual environment, caches and run outputs
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache .mypy_cache
