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

# Serial: on 2 vCPUs two xdist workers were no faster (docs/benchmarks.md). The suite is xdist-safe
# (tests/conftest.py shares the session artifacts under a file lock): `pytest -n auto --dist loadfile`
# on a machine with more cores.
test: $(STAMP)
	$(BIN)/python -m pytest -q

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
