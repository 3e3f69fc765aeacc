# dream-pl developer targets. `make help` lists them.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
FAISS ?= cpu

.PHONY: help install install-gpu demo test test-full lint format bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed-$(FAISS): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[dev,$(FAISS)]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(VENV)/.installed-$(FAISS)  ## create .venv, install editable with dev extra and faiss-cpu

install-gpu:  ## same, with faiss-gpu instead of faiss-cpu
	$(PIP) uninstall -q -y faiss-cpu || true
	$(MAKE) install FAISS=gpu

demo: install  ## quick start: distil mnist_5k at IPC 1 on the CPU, evaluate vs random real images
	$(PY) -m dream_pl.train experiment=quickstart

test: install  ## default test suite (fast tier, < 5 min on 2 CPU cores)
	$(PY) -m pytest -q

test-full: install  ## every test, slow tier included
	$(PY) -m pytest -q -m "slow or not slow"

lint: install  ## ruff check + format check
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/ruff format --check src tests benchmarks experiments

format: install  ## ruff format + autofix
	$(VENV)/bin/ruff format src tests benchmarks experiments
	$(VENV)/bin/ruff check --fix src tests benchmarks experiments

bench: install  ## CPU benchmark presets, ~75 minutes on 2 cores (not run in CI); figures go to docs/benchmarks.md
	$(PY) benchmarks/evaluator.py --epochs 5
	$(PY) benchmarks/clustering.py
	$(PY) benchmarks/step.py --steps 3
	$(PY) benchmarks/efficiency.py --preset efficiency_cpu --ipcs 1 --out docs/components diagnostics_every=10

clean:  ## remove build and run outputs (keeps .venv)
	rm -rf build *.egg-info src/*.egg-info logs .pytest_cache
