# Two set-up commands: `make demo` (install + forecasting benchmark) and `make test` (install + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
THREADS ?= 2

$(BIN)/ebt-forecast: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/ebt-forecast

demo: install
	$(BIN)/ebt-forecast benchmark runtime.threads=$(THREADS)

test: install
	$(BIN)/python -m pytest -q tests

.PHONY: install demo test
