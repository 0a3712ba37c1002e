# Two commands on a fresh machine: `make demo` and `make test`. Needs Python 3.10+ and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,all]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) integrations/edge_demo.py

lint: $(STAMP)
	$(PY) -m ruff check ownership_ctx tests benchmarks integrations
	$(PY) -m ruff format --check ownership_ctx tests benchmarks integrations

typecheck: $(STAMP)
	$(PY) -m mypy

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory lint typecheck

bench: $(STAMP)
	@mkdir -p bench-results
	@for b in benchmarks/*.py; do \
	  echo "== $$b"; $(PY) $$b --json bench-results/$$(basename $$b .py).json || exit 1; \
	done

bench-quick: $(STAMP)
	@mkdir -p bench-results
	@for b in benchmarks/*.py; do \
	  echo "== $$b"; $(PY) $$b --quick --json bench-results/$$(basename $$b .py).json || exit 1; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench-results *.egg-info
