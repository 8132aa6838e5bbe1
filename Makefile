# Two commands for a fresh machine: `make demo` (set-up + the main job) and `make test` (set-up + tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS := export,serve,kernels,fleet,plot,dev
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
export DIGA_DATA_DIR ?= $(CURDIR)/runs/data

.PHONY: setup demo test test-fast ablation bench lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/diga demo --out runs/demo

ablation: setup
	$(VENV)/bin/diga adapt ablation --out runs/ablation

test: setup
	TRITON_INTERPRET=1 $(PY) -m pytest -q --timeout 900 tests

test-fast: setup
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "not slow" tests

lint: setup
	$(VENV)/bin/ruff check diga_sdk tests benchmarks examples
	$(VENV)/bin/lint-imports

clean:
	rm -rf runs .pytest_cache
