# Mira service node. `make run` and `make test` install what they need first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run dev test lint bench bench-quick clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the pinned requirements

run: $(STAMP)  ## run the node (settings from the environment and .env)
	$(PY) server.py

dev: $(STAMP)  ## run with Tornado's autoreload: restarts when a source file changes
	$(PY) -m tornado.autoreload server.py

test: $(STAMP)  ## run the test suite
	$(PY) -m pytest

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV)
