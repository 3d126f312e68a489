# Everything the project needs is installed by these targets, from a fresh clone, into the repo:
# a Python 3.11 venv pinned by constraints.txt, and Azurite pinned by package-lock.json.
# Stamp files make a second run fast.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: setup test test-fast demo bench stack-up stack-down clean help

help:
	@echo "make demo       set up, start the local stack and run the secure training path end to end"
	@echo "make test       set up and run the whole test suite (unit, integration, end-to-end)"
	@echo "make test-fast  the suite without the slow end-to-end tests"
	@echo "make bench      throughput and memory benchmarks beside their baselines"
	@echo "make stack-down stop the local stack's processes"
	@echo "make clean      remove the venv, node_modules and the stack state (.securetrain/)"

$(PY_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(PY_STAMP) $(NODE_STAMP)

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m 'not slow'

demo: setup
	$(BIN)/securetrain demo

bench: setup
	$(BIN)/python -m benchmarks

stack-up: setup
	$(BIN)/securetrain stack up

stack-down:
	-$(BIN)/securetrain stack down

clean: stack-down
	rm -rf $(VENV) node_modules .securetrain
