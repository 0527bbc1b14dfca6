# One target runs exactly what CI runs.
.PHONY: test lint

test: lint
	python -m pytest -q

lint:
	ruff check .
	ruff format --check trainer launchers tests
