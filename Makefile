# Two commands on a fresh machine: `make demo` and `make test`. Each creates or refreshes the
# virtual environment in .venv (re-installing when pyproject.toml changes) before it runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
DEMO_ARGS ?=
PYTEST_ARGS ?=

BENCH_ARGS ?=

.PHONY: demo test lint typecheck codegen-check schema-check unit clean venv bench bench-quick

venv: $(STAMP)

$(STAMP): pyproject.toml
	@echo "==> preparing $(VENV) (Python packages pinned in pyproject.toml)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/stackline demo $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

codegen-check: $(STAMP)
	$(PY) -m proto.codegen --check

schema-check: $(STAMP)
	$(PY) -m collector.schema --check

test: lint typecheck codegen-check schema-check
	$(PY) -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# the benchmark scenarios (bench/run.py; results in bench/results/); not part of `make test`
bench: $(STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(PY) bench/run.py --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .stackline .pytest_cache .mypy_cache .ruff_cache
