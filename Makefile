# The two commands of the README: `make demo` (the main job, offline without POE_API_KEY) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TOPIC ?= Monday mornings
OUT ?= meme.png

.PHONY: demo test lint lock gallery bench clean

$(BIN)/.installed: requirements-dev.lock pyproject.toml system-packages.txt
	bash scripts/install-system-packages.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

demo: $(BIN)/.installed
	$(BIN)/memebot make "$(TOPIC)" --out $(OUT)

test: $(BIN)/.installed
	$(BIN)/python -m pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Regenerate the pinned requirements after changing dependencies in pyproject.toml.
lock:
	$(BIN)/pip install -q uv
	$(BIN)/uv pip compile -q pyproject.toml --python-version 3.11 --no-header -o requirements.lock
	$(BIN)/uv pip compile -q pyproject.toml --extra dev --python-version 3.11 --no-header -o requirements-dev.lock

gallery: $(BIN)/.installed
	$(BIN)/python scripts/gallery.py gallery

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/latency.py
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache gallery
