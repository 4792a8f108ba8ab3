# tunesmith: `make demo` runs the embedded default, `make test` the test suite.
# Each target creates .venv and installs what it needs (skipped when nothing changed).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: demo test test-fast test-gpu check-extras bench bench-quick lint format clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first: here it resolves to the local CPU build; elsewhere it is the normal wheel.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples

test: lint
	$(PY) -m pytest -q -m "not gpu" --durations=15

# `.[dev]` installs every extra but the CUDA-only ones; pip's own resolver checks those against
# the pins too (a dry run: it reads the package index, installs nothing). .ci/run calls it.
check-extras: $(STAMP)
	$(PY) -m pip install --quiet --dry-run -c constraints.txt ".[dev,liger]"

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not gpu and not slow and not distributed" -x

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu tests/gpu

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[bench]"
	touch $(BENCH_STAMP)

# The benchmarks' own dependencies (trl, ...) come from the `bench` extra.
bench: $(BENCH_STAMP)
	$(PY) bench/run_all.py $(BENCH_ARGS)

bench-quick: $(BENCH_STAMP)
	$(PY) bench/run_all.py --quick

format: $(STAMP)
	$(VENV)/bin/ruff format src tests bench examples
	$(VENV)/bin/ruff check --fix src tests bench examples

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
