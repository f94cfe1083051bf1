# jobqueue: every target creates the virtualenv it needs, so a fresh clone
# needs nothing but `make run` and `make test`.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STATE  ?= ./state
PYTEST_ARGS ?=

.PHONY: run test etcd browser strace lint soak bench bench-quick man clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

# An editable install: the checkout is put on sys.path by a plain .pth file,
# because setup.py maps the packages to the checkout's root (package_dir).
# Without that mapping setuptools would either install an import finder that
# every interpreter start loads (a third of jobctl's start-up), or, in its
# "compat" mode, print a 14-line deprecation banner.
INSTALL = $(BIN)/python -m pip install --quiet

# One stamp per set of extras; re-installed when setup.py or the optional C
# write helper changes (the install builds it in place, next to its module).
C_HELPER := jobqueue/storage/_fastwrite.c
$(VENV)/.installed-base: setup.py $(C_HELPER) | $(BIN)/python
	$(INSTALL) -e .
	touch $@

$(VENV)/.installed-test: setup.py $(C_HELPER) | $(BIN)/python
	$(INSTALL) -e '.[test]'
	touch $@

$(VENV)/.installed-lint: setup.py $(C_HELPER) | $(BIN)/python
	$(INSTALL) -e '.[lint]'
	touch $@

run: $(VENV)/.installed-base
	$(BIN)/jobqueue-masterd --state-dir $(STATE)

# The etcd tests need an etcd server: as root this installs Debian's
# etcd-server when none is found; it never fails (the tests skip, saying why).
etcd:
	@bash tests/setup_etcd.sh

# The dashboard tests drive a headless browser: as root this installs Debian's
# chromium and chromium-driver when they are missing; it never fails (the
# tests skip, saying why).
browser:
	@bash tests/setup_chromium.sh

# The test of the order of durable writes runs the daemon under strace: as
# root this installs Debian's strace when it is missing; it never fails (the
# test skips, saying why).
strace:
	@bash tests/setup_strace.sh

test: $(VENV)/.installed-test etcd browser strace
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
