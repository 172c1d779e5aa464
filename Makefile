# runlab — the two commands a new user runs: `make demo` and `make test`.
# Both install what they need (Debian packages when missing, a venv, pinned pip packages).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench lock clean system workloads

system:
	@scripts/ensure-system-packages

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -r requirements.lock
	@$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

# The tiny test workloads: static C server, podman image, QEMU microVM kernel + initramfs.
workloads:
	@PODMAN_STORE=$(CURDIR)/build/cache/podman-store bash build/workloads/build.sh

demo: system $(STAMP) workloads
	@$(PY) -m runlab.demo

lint: $(STAMP)
	@$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	@$(VENV)/bin/mypy

test: system $(STAMP) lint
	@$(PY) -m pytest -q $(PYTEST_ARGS)

bench: system $(STAMP)
	@$(PY) bench/run_all.py $(BENCH_ARGS)

# Refresh the lock after changing dependencies in pyproject.toml.
lock:
	@rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv && .lockvenv/bin/pip install -q -e '.[dev]' && \
	  .lockvenv/bin/pip freeze --exclude-editable > requirements.lock && rm -rf .lockvenv

clean:
	rm -rf $(VENV) .demo .pytest_cache .ruff_cache .mypy_cache .hypothesis
