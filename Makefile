# Two commands on a fresh machine: `make demo` and `make test`. Needs Python 3.10+ and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo demo-edge test lint typecheck bench bench-quick bench-10m property-long proof faults clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,all]'
	touch $(STAMP)

install: $(STAMP)

# What the tests use from the system besides Python: headless Chromium renders the HTML report.
# Installed when missing and apt-get is there (CI, as root); elsewhere that test skips and says so.
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not installed: the HTML report test will skip"; fi; }

demo: $(STAMP)
	$(VENV)/bin/ownership-ctx demo

# The edge alone: requests through the middleware, enforce / quarantine / stamp, log lines.
demo-edge: $(STAMP)
	$(PY) integrations/edge_demo.py

lint: $(STAMP)
	$(PY) -m ruff check ownership_ctx tests benchmarks integrations
	$(PY) -m ruff format --check ownership_ctx tests benchmarks integrations

typecheck: $(STAMP)
	$(PY) -m mypy

# The broker fault tests (restarts, resets, killed workers: minutes) run in `make faults`,
# which keeps `make test` (and CI) under 15 minutes.
FAULT_TESTS := tests/dramatiq/test_dramatiq_faults.py tests/celery/test_celery_faults.py
test: $(STAMP)
	$(PY) -m pytest $(addprefix --ignore=,$(FAULT_TESTS)) $(PYTEST_ARGS)
	$(MAKE) --no-print-directory lint typecheck

bench: $(STAMP)
	@mkdir -p bench-results
	@for b in benchmarks/*.py; do \
	  echo "== $$b"; $(PY) $$b --json bench-results/$$(basename $$b .py).json || exit 1; \
	done

# 10 million events in the report benchmark: several minutes and a few GB of disk.
bench-10m: $(STAMP)
	$(PY) benchmarks/report_scale.py --full

# The property tests with many more examples than CI runs.
property-long: $(STAMP)
	OWNERSHIP_CTX_PROPERTY_SCALE=30 OWNERSHIP_CTX_DRAMATIQ_EXAMPLES=200 \
	OC_CELERY_PROPERTY_EXAMPLES=200 $(PY) -m pytest tests/core/test_codec_properties.py \
	  tests/dramatiq/test_dramatiq_property.py tests/celery/test_celery_property.py

# Proof at scale (docs/proof-at-scale.md): per queue library and broker, random workflows until
# PROOF_WORKFLOWS were checked with zero lost and zero leaked; prints the table, writes proof-results.json.
PROOF_WORKFLOWS ?= 1000
proof: $(STAMP)
	OWNERSHIP_CTX_REQUIRE_BROKERS=1 OC_PROOF_WORKFLOWS=$(PROOF_WORKFLOWS) \
	OC_PROOF_REPORT=proof-results.json $(PY) -m pytest -p no:cacheprovider \
	  tests/dramatiq/test_dramatiq_property.py tests/celery/test_celery_property.py

# Every fault test on both brokers, with OC_FAULT_SCALE times the workflows.
FAULT_SCALE ?= 3
faults: $(STAMP)
	OWNERSHIP_CTX_REQUIRE_BROKERS=1 OC_FAULTS_ALL=1 OC_FAULT_SCALE=$(FAULT_SCALE) $(PY) -m pytest \
	  -p no:cacheprovider -rA $(FAULT_TESTS)

bench-quick: $(STAMP)
	@mkdir -p bench-results
	@for b in benchmarks/*.py; do \
	  echo "== $$b"; $(PY) $$b --quick --json bench-results/$$(basename $$b .py).json || exit 1; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench-results proof-results.json *.egg-info
