# The two commands of this project (see README): `make demo` and `make test`.
# Both create/refresh .venv and install what they need; nothing else is required.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-test

.PHONY: demo test lint unit e2e bench clean

# the venv's own pip (22.3 or later with Python 3.11: PEP 660) is enough for the fallback's editable install:
# no `pip install --upgrade pip` (6 s)
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# scripts/install_env.py: uv (pip's settings handed to it) or pip; `make test USE_UV=0`: pip
$(STAMP): pyproject.toml scripts/install_env.py | $(BIN)/python
	$(BIN)/python scripts/install_env.py
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/run_demo.py

lint: $(STAMP)
	$(BIN)/ruff check dagster_metaflow tests benchmarks examples scripts
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

e2e: $(STAMP)
	$(BIN)/python -m pytest tests/e2e -q -n 2 --dist worksteal

# two workers for two cores: a third one (tried: 16 min 6 s of pytest from a fresh clone
# against 15 min 29 s with two; again in the eleventh round, 13 min 5 s against 13 min 19 s,
# within the machine's variance) gains nothing measurable and makes every timing-sensitive
# test share two cores three ways; the suite keeps both cores busy 71% of its time.
# worksteal: a worker that runs dry takes tests queued on the other (xdist's default hands
# out fixed batches, so one worker sat on the slow daemon tests at the end: 934 s of pytest
# against 873 s with worksteal, same tree, one run each)
# compileall first: the editable package's bytecode is written once, so the suite's ~1,000
# Python processes (CLI commands, plain step processes) do not each compile it again when
# the environment says PYTHONDONTWRITEBYTECODE (as this machine's does); ~50 ms each
test: lint
	$(BIN)/python -m compileall -q dagster_metaflow metaflow_extensions tests
	$(BIN)/python -m pytest tests -q -n 2 --dist worksteal --durations=10 -rs

bench: $(STAMP)
	$(BIN)/python benchmarks/trigger.py --repeat 3

clean:
	rm -rf $(VENV) .dagster_home examples/.metaflow examples/*_dagster.py *.egg-info
