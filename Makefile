# The README's two commands: `make demo` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench setup clean

setup: $(STAMP)

# Re-install when the dependency list changes. pip takes torch/torchvision from this
# machine's disk (their ranges in pyproject.toml admit the local builds). pip compiles every
# module to bytecode here (about a minute): keep it, since where PYTHONDONTWRITEBYTECODE is set
# (these machines) Python would otherwise compile torch again in every process that imports it,
# and the suite starts hundreds (check: `time .venv/bin/python -c "import torch"` in either venv).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m selfreg train configs/demo.yaml

# One pytest-xdist worker per core, each computing on one thread (tests/conftest.py); an idle
# worker takes pending tests from the busy one (worksteal), so the long tests do not end alone.
test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n auto --dist worksteal --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -q -n auto --dist worksteal -m "not slow"

# Regenerates docs/performance.md (tens of minutes on a 2-core CPU; GPU parts skip without CUDA).
bench: $(STAMP)
	for s in step_time framework_tax data_wait profile_step compile_precision compile_cache time_to_94; do \
	  PYTHONPATH=src $(PY) benchmarks/$$s.py --markdown docs/performance.md || exit 1; done

clean:
	rm -rf runs .pytest_cache
