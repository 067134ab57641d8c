# The two commands of this project (see README): `make demo` and `make test`.
# Both create/refresh .venv and install what they need; nothing else is required.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-test

.PHONY: demo test lint unit e2e bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# uv installs what pip would (the same versions: compared with `pip freeze`) in ~10 s where
# pip takes ~68 s on a fresh clone of this 2-core machine; pip when uv cannot be installed or
# fails (uv reads neither pip.conf's indexes nor its constraints: a machine that needs them
# gets pip). uv is kept outside the venv's bin: on PATH there, `create-dagster project`
# would make its project a uv project (tests/e2e/test_dg.py follows the README, no uv)
UV := $(VENV)/uv-tool/bin/uv
INSTALL = install() { $(UV) pip install -q --compile-bytecode --python $(BIN)/python "$$@" || \
	  { echo "uv could not install $$*: using pip"; $(BIN)/python -m pip install -q "$$@"; }; }

# dagster-dg-cli and create-dagster (tests/e2e/test_dg.py) must be dagster's own version
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade --target $(VENV)/uv-tool uv || \
	  echo "uv is not available: installing with pip"
	$(INSTALL); install -e '.[test]' && \
	  DV=$$($(BIN)/python -c 'import dagster; print(dagster.__version__)') && \
	  install "dagster-dg-cli==$$DV" "create-dagster==$$DV"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/run_demo.py

lint: $(STAMP)
	$(BIN)/ruff check dagster_metaflow tests benchmarks examples
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
