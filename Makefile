# Two commands do all the set-up from a fresh clone:
#   make demo   create .venv if missing, install, run the demo offline
#   make test   create .venv if missing, install, run the whole test suite
#   make check  lint (ruff) and type checks of src/ (also run by .ci/run)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test check install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/spurious demo --out demo-out

# Two xdist workers of one CPU thread each (tests/conftest.py shares the cores out): on 2 vCPUs this is
# ~1.3x faster than one serial process (docs/benchmarks.md). `make test TEST_WORKERS=8` on more cores;
# `TEST_WORKERS=0` runs serially. --dist loadfile keeps a file's module fixtures in one worker.
# PYTHONDONTWRITEBYTECODE= (empty: off) lets Python cache the compiled modules and pytest its
# rewritten test modules in __pycache__/ (git-ignored) even where the environment turns that off:
# without the cache every worker, and every subprocess the tests start, compiles them again on each
# run (a single-process collection: 8.2 s without the cache, 4.9 s with it; docs/benchmarks.md).
TEST_WORKERS ?= 2
test: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

check: $(STAMP)
	$(BIN)/ruff check src
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/bench_npca.py
	$(BIN)/python bench/bench_extract.py
	$(BIN)/python bench/bench_apgd.py
	$(BIN)/python bench/bench_score.py
	$(BIN)/python bench/bench_fix.py
	$(BIN)/python bench/bench_retrieve.py

clean:
	rm -rf demo-out .pytest_cache build dist src/*.egg-info
