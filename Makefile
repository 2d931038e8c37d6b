# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch from this machine's disk (the CPU wheel), never a CUDA build from an index.
PIP    := $(BIN)/pip install --quiet -c constraints.txt

.PHONY: demo test wheel bench bench-wan bench-quality lint format clean schema

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[instructor,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ganpool demo --workers 2 --steps 600 --out demo-out

# dist/ganpool-<version>-py3-none-any.whl: what students install (`ganpool dashboard` serves it).
wheel: $(BIN)/python
	rm -rf build dist
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir dist .

test: $(STAMP) wheel
	@test -x /usr/bin/chromium || apt-get install -y chromium >/dev/null  # browser tests
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	GANPOOL_TEST_WHEEL_DIR=dist $(BIN)/python -m pytest --durations=15

# src/ganpool/store/sql/schema.sql: what the migrations make, dumped from a freshly migrated
# database on a private PostgreSQL 18. Run it after adding (or merging) a migration.
schema: $(STAMP)
	$(BIN)/python tools/dump_schema.py

# Performance figures (not part of `make test`): bench/results/latest.json + a table.
bench: $(STAMP)
	$(BIN)/python benchmarks/performance.py

# Simulated GPU students behind shaped home-broadband links (not part of `make test`):
# bench/results/wan.json + a table; ~15 min on 2 cores. WAN_ARGS passes flags, e.g.
# `make bench-wan WAN_ARGS="--rtt-ms 60 --up-mbit 10"` (docs/performance.md, "Over the WAN").
bench-wan: $(STAMP)
	$(BIN)/python benchmarks/wan.py $(WAN_ARGS)

# Quality protocol (docs/quality.md; not part of `make test`): KID of each training mode over
# paired seeds -> bench/results/quality.json. About an hour of one CPU core; reruns reuse
# the per-seed results that still match (--resume).
bench-quality: $(STAMP)
	nice -n 15 $(BIN)/python benchmarks/quality_protocol.py --resume

lint: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) build dist demo-out .pytest_cache mutants .mutation

# Mutation testing (docs/testing.md), not part of `make test`: one module per run, e.g.
# `make mutation MODULE=schedule`. Modules: aggregation screening training schedule
# coordinator ([tool.mutmut.modules] in pyproject.toml), and sql (curated mutants of the
# database's rules). Slow: minutes to hours per module; a rerun resumes.
MODULE        ?= aggregation
MUTATION_JOBS ?= 1
# The tests' second server is the same code on PostgreSQL 15: skip it, halving each run.
MUTATION_ENV  := env -u PYTHONPATH GANPOOL_TEST_SYSTEM_PG=postgresql://postgres@127.0.0.1:1/x

.PHONY: mutation
mutation: $(STAMP)
	$(PIP) -e '.[mutation]'
ifeq ($(MODULE),sql)
	$(MUTATION_ENV) nice -n 10 $(BIN)/python tools/sql_mutants.py $(MUTATION_ARGS)
else
	$(MUTATION_ENV) $(BIN)/python tools/mutation.py $(MODULE) --jobs $(MUTATION_JOBS) $(MUTATION_ARGS)
endif
