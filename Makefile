# Two commands do everything, set-up included:
#   make demo   -- create/refresh .venv, then run the demo (examples/demo.py)
#   make test   -- create/refresh .venv, then ruff, then pytest (tests, doctests, notebooks) with mypy alongside
#   make docs   -- build the documentation site into build/site (MkDocs, warnings are errors)
# The set-up runs again only when pyproject.toml changes (stamp file .venv/.installed).

# The interpreter .venv is made with. Empty: the set-up picks the fastest suitable CPython 3.10+ among python3 on
# PATH and the system's /usr/bin/python3 (tools/pick_python.py: a distribution's optimised build runs this suite
# much faster than a version manager's default build).
PYTHON ?=
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch. Here it lies on disk (pip's find-links); elsewhere set e.g.
#   make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
PIP_OPTS := --disable-pip-version-check --progress-bar off -q
DEMO_ARGS ?=

.PHONY: demo test test-fast setup lint typecheck pytest docs gpu-check clean

# Python writes each module's bytecode the first time it is imported (its default; a PYTHONDONTWRITEBYTECODE
# set in the environment is dropped for make's commands), instead of the installer compiling all ~13,000
# files of the environment up front (~50 s here, most of them never imported).
unexport PYTHONDONTWRITEBYTECODE

# Set-up installs with uv (parallel, from the places pip is configured to use: tools/uv_args.py), into a
# venv created without pip (pip then comes with the dev extra); where uv cannot be had, with pip.
# The bytecode of what every run imports is written once, side by side with the installation: an import of
# torch's Dynamo (it writes exactly the ~1,400 files of torch, sympy and numpy it reads) while the dev
# extras install and then, on the other cores, compileall of the packages below (their tests excluded).
# numpy comes with torch (torch's import reads it); should the dev install still change a package that
# import reads while it runs, the import is run again once everything is installed.
BYTECODE_PACKAGES := lightning lightning_fabric pytorch_lightning torchmetrics tensorboard fsspec yaml rich numpy \
	scipy sklearn joblib narwhals matplotlib PIL dateutil _pytest xdist execnet pluggy
$(VENV)/.installed: pyproject.toml
	@ARGS_FILE="$$(mktemp)"; $(or $(PYTHON),python3) tools/uv_args.py >"$$ARGS_FILE" 2>/dev/null & args=$$!; \
	BASE="$(PYTHON)"; test -n "$$BASE" || BASE="$$(python3 tools/pick_python.py)" || exit 1; \
	test -x $(PY) || $$BASE -m venv --without-pip $(VENV) || exit 1; \
	wait $$args; UV_ARGS="$$(cat "$$ARGS_FILE")"; rm -f "$$ARGS_FILE"; \
	if test -x $(VENV)/bin/uv || $$BASE -m pip --python $(PY) install $(PIP_OPTS) uv >$(VENV)/install.log 2>&1; then \
		INSTALL="$(VENV)/bin/uv pip install -q --python $(PY) $$UV_ARGS"; \
	else \
		echo "uv is not available: installing with pip"; \
		$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip >$(VENV)/install.log 2>&1 || { \
			cat $(VENV)/install.log; exit 1; }; \
		INSTALL="$(PY) -m pip install $(PIP_OPTS)"; \
	fi; \
	$(PY) -c "import torch" 2>/dev/null || { echo "installing $(TORCH_SPEC)"; \
		$$INSTALL $(TORCH_SPEC) numpy >$(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }; }; \
	$(PY) -W ignore -c "import torch._dynamo" >$(VENV)/warm.log 2>&1 & warm=$$!; \
	echo "installing lightning_regkit[dev] (editable)"; \
	$$INSTALL -e ".[dev]" pip >$(VENV)/install-dev.log 2>&1 || { cat $(VENV)/install-dev.log; exit 1; }; \
	SITE="$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"; \
	JOBS=$$(( $$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2) - 1 )); test $$JOBS -ge 1 || JOBS=1; \
	$(PY) -m compileall -q -j $$JOBS -x '/tests?/' $(addprefix "$$SITE"/,$(BYTECODE_PACKAGES)) \
		>$(VENV)/compile.log 2>&1 || true; \
	wait $$warm || $(PY) -W ignore -c "import torch._dynamo" >$(VENV)/warm.log 2>&1 || { \
		echo "torch does not import"; cat $(VENV)/install.log $(VENV)/warm.log; exit 1; }
	@$(PY) -c "import importlib.util as u; assert all(map(u.find_spec, ['lightning_regkit', 'lightning', 'xdist']))" \
		|| { echo "set-up failed"; exit 1; }
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

# The inner loop: unit tests only (no slow, multi-process, torch.compile, whole-run integration, docs-page or
# notebook tests), on the same workers.
test-fast: $(VENV)/.installed
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist worksteal -m "not slow and not distributed and not compile and not integration" \
		-q $(PYTEST_ARGS)

docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict

# On a machine with a CUDA GPU: the CUDA tests and the penalty benchmark on the GPU, with the Python found there.
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
