# Two commands do everything, set-up included:
#   make demo   -- create/refresh .venv, then run the demo (examples/demo.py)
#   make test   -- create/refresh .venv, then ruff, then pytest (tests, doctests, notebooks) with mypy alongside
#   make docs   -- build the documentation site into build/site (MkDocs, warnings are errors)
# The set-up runs again only when pyproject.toml changes (stamp file .venv/.installed).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch. Here it lies on disk (pip's find-links); elsewhere set e.g.
#   make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check --progress-bar off -q
DEMO_ARGS ?=

.PHONY: demo test test-fast setup lint typecheck pytest docs gpu-check clean

# Set-up installs with uv (parallel downloads, bytecode compiled in parallel: ~45 s here instead of ~175 s
# with pip), from the places pip is configured to use (tools/uv_args.py); without uv it falls back to pip.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if $(PIP_INSTALL) uv >$(VENV)/install.log 2>&1; then \
		UV_ARGS="$$($(PY) tools/uv_args.py)"; \
		INSTALL="$(VENV)/bin/uv pip install -q --python $(PY) --compile-bytecode $$UV_ARGS"; \
	else \
		echo "uv is not available: installing with pip"; INSTALL="$(PIP_INSTALL)"; \
	fi; \
	$(PY) -c "import torch" 2>/dev/null || { echo "installing $(TORCH_SPEC)"; \
		$$INSTALL $(TORCH_SPEC) >$(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }; }; \
	$(PY) -W ignore -c "import torch" || { echo "torch did not install"; exit 1; }; \
	echo "installing lightning_regkit[dev] (editable)"; \
	$$INSTALL -e ".[dev]" >$(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	@$(PY) -c "import lightning_regkit, lightning, sklearn, pytest" || { echo "set-up failed"; exit 1; }
	@touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) examples/demo.py $(DEMO_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy lightning_regkit

# Tests run on PYTEST_WORKERS processes (pytest-xdist; 2 = this machine's cores; 0 = in this process);
# worksteal: a worker that runs out of tests takes some of the other's (the durations are uneven).
PYTEST_WORKERS ?= 2

pytest: $(VENV)/.installed
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# mypy runs while pytest does (it is single-threaded and pytest's start waits on imports): the gate
# fails if either fails; mypy's report is printed after pytest's.
test: lint
	@echo "mypy lightning_regkit (in the background while pytest runs)"
	@$(VENV)/bin/mypy lightning_regkit >$(VENV)/mypy.log 2>&1 & mypy=$$!; \
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS); rc=$$?; \
	wait $$mypy; mypy_rc=$$?; echo "--- mypy"; cat $(VENV)/mypy.log; \
	test $$mypy_rc -eq 0 || { echo "mypy failed"; exit 1; }; exit $$rc

# The inner loop: unit tests only (no slow, multi-process, docs-page or notebook tests), on the same workers.
test-fast: $(VENV)/.installed
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist worksteal -m "not slow and not distributed" -p no:nbmake \
		-o addopts="--strict-markers --doctest-modules" -q $(PYTEST_ARGS)

docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict

# On a machine with a CUDA GPU: the CUDA tests and the penalty benchmark on the GPU, with the Python found there.
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
