# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,metrics,hub]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ganpool demo --workers 2 --steps 600 --out demo-out

test: $(STAMP)
	@test -x /usr/bin/chromium || apt-get install -y chromium >/dev/null  # browser tests
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest

# Performance figures (not part of `make test`): bench/results/latest.json + a table.
bench: $(STAMP)
	$(BIN)/python benchmarks/performance.py

lint: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) demo-out .pytest_cache
