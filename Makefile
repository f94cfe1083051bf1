# jobqueue: every target creates the virtualenv it needs, so a fresh clone
# needs nothing but `make run` and `make test`.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STATE  ?= ./state
PYTEST_ARGS ?=

.PHONY: run test lint soak bench bench-quick man clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

# One stamp per set of extras; re-installed when setup.py changes.
$(VENV)/.installed-base: setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed-lint: setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[lint]'
	touch $@

run: $(VENV)/.installed-base
	$(BIN)/jobqueue-masterd --state-dir $(STATE)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-lint
	$(BIN)/ruff check jobqueue daemons tests $(wildcard bench)
	$(BIN)/ruff format --check jobqueue daemons tests $(wildcard bench)
	$(BIN)/mypy

soak: $(VENV)/.installed-test
	JOBQUEUE_SOAK=long $(BIN)/python -m pytest -m soak -s $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(BIN)/python -m bench.run --full

bench-quick: $(VENV)/.installed-test
	$(BIN)/python -m bench.run --quick

man:
	@$(PYTHON) -c 'import docutils' 2>/dev/null || { echo "docutils is not installed; skipping man pages"; exit 0; }; \
	mkdir -p doc/man; \
	for page in jobctl jobqueue-masterd jobqueue-cleaner; do \
	  $(PYTHON) -m docutils --writer=manpage doc/$$page.rst doc/man/$$page.1 || exit 1; \
	done; echo "man pages in doc/man/"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
