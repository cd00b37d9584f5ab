# layerlab: `make book` builds the replication book, `make test` runs the tests.
# Both build the environment first (`make setup`) when environment.yml changed.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.layerlab-setup
PROFILE ?= quick
# DTYPE: '' (each chapter's own, default auto: the fastest this CPU computes) or float32 | bfloat16 | float16
DTYPE ?=
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-fast book data bench clean

setup: $(STAMP)

# conda/mamba where installed (a prefix env at .venv), else python -m venv + pip;
# both read environment.yml (scripts/env_requirements.py extracts its pip: list).
$(STAMP): environment.yml lib/pyproject.toml scripts/env_requirements.py
	@set -e; \
	if command -v mamba >/dev/null 2>&1 || command -v conda >/dev/null 2>&1; then \
	  CONDA=$$(command -v mamba || command -v conda); \
	  echo "setup: $$CONDA env at $(VENV)"; \
	  if [ -x $(PY) ]; then $$CONDA env update -p $(VENV) -f environment.yml; \
	  else $$CONDA env create -p $(VENV) -f environment.yml; fi; \
	else \
	  echo "setup: no conda found; python -m venv $(VENV) + pip from environment.yml"; \
	  [ -x $(PY) ] || $(PYTHON) -m venv $(VENV); \
	  $(PY) -m pip install -q --upgrade pip; \
	  $(PY) -m pip install -q -r <($(PYTHON) scripts/env_requirements.py); \
	fi; \
	$(PY) -m pip install -q --no-deps $$($(PYTHON) scripts/env_requirements.py --no-deps)
	@# the browser test drives Debian's Chromium (playwright's own browser download needs the network)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "setup: chromium not installed; the browser test will be skipped"; }
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --durations=12 tests

# the fast unit tests only (tiny random models, seconds)
test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not smoke" tests

data: setup
	$(PY) -m layerlab.core.io.data_fetch fetch

# DRY_RUN=1: the profile's every chapter on tiny random models, sizes cut (layerlab.book.dry_run)
book: setup
	$(PY) -m layerlab.book --profile $(PROFILE) $(if $(DTYPE),--dtype $(DTYPE)) $(if $(DRY_RUN),--dry-run)

bench: setup
	$(PY) bench/run.py

# the GPU path on a 7B-shaped model (tests/test_cuda.py first), JSON report in gpu_check.json;
# GPU_CHECK_ARGS='--mode cpu' runs the small CPU version (tests/test_gpu_check.py runs it in `make test`)
.PHONY: gpu-check
gpu-check: setup
	$(PY) scripts/gpu_check.py --out gpu_check.json $(GPU_CHECK_ARGS)

clean:
	rm -rf _build book/executed
