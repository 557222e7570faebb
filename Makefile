# The two commands that do all set-up on a fresh machine:
#   make serve   API on http://127.0.0.1:8080 with an embedded SQLite database and one worker
#   make test    lint, type checks, the OpenAPI contract and the whole test suite

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint pytest openapi bench-queue bench-import bench-evaluate bench-predict bench-download clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's requirements change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

serve: $(VENV)/.installed
	$(BIN)/edge-automl db upgrade
	exec $(BIN)/edge-automl serve

test: lint pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check app migrations tests bench
	$(BIN)/ruff format --check app migrations tests bench
	$(BIN)/mypy
	$(BIN)/edge-automl openapi --check

# Two processes share the suite (most tests wait on servers, workers and the database); the
# trainings with wall-clock budgets then run alone.
pytest: $(VENV)/.installed-dev
	$(BIN)/pytest -n 2 --dist loadfile -m "not serial"
	$(BIN)/pytest -m serial

openapi: $(VENV)/.installed
	$(BIN)/edge-automl openapi

bench-queue: $(VENV)/.installed-dev
	$(BIN)/python bench/queue.py

bench-import: $(VENV)/.installed-dev
	$(BIN)/python bench/import_scale.py

bench-evaluate: $(VENV)/.installed-dev
	$(BIN)/python bench/evaluate.py

bench-predict: $(VENV)/.installed-dev
	$(BIN)/python bench/predict.py

bench-download: $(VENV)/.installed-dev
	$(BIN)/python bench/download.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
