# Everything the project needs is installed by these targets, from a fresh clone, into the repo:
# a Python 3.11 venv pinned by constraints.txt, and Azurite pinned by package-lock.json.
# Stamp files make a second run fast.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
DEBIAN_STAMP := $(VENV)/.debian-packages
TPM_STAMP := $(VENV)/.debian-tpm-packages
CELERY_STAMP := $(VENV)/.debian-celery-packages

.PHONY: setup test test-fast demo airflow bench stack-up stack-down clean help

help:
	@echo "make demo       set up, start the local stack and run the secure training path end to end"
	@echo "make test       set up and run the whole test suite (unit, integration, end-to-end)"
	@echo "make test-fast  the suite without the slow end-to-end tests"
	@echo "make airflow    start the Airflow UI (standalone) against the local stack"
	@echo "make bench      throughput and memory benchmarks beside their baselines"
	@echo "make stack-down stop the local stack's processes"
	@echo "make clean      remove the venv, node_modules and the stack state (.securetrain/)"

# The emulated Azure CVM's vTPM (swtpm, swtpm-tools), the TPM tools its tests read the event log with (tpm2-tools)
# and the TPM software stack tpm2-pytss builds against (libtss2-dev, with pkg-config to find it): installed before
# the venv, only when missing. libtss2-dev brings every TCTI, libtss2-tcti-swtpm0 (the paravisor's) included.
$(TPM_STAMP):
	dpkg -s swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config)
	mkdir -p $(VENV)
	touch $@

$(PY_STAMP): pyproject.toml constraints.txt $(TPM_STAMP)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Debian's chromium (the browser test drives it; never a Playwright download) and docker-compose (the
# compose file is validated with `docker-compose config`), installed only when missing.
$(DEBIAN_STAMP): $(PY_STAMP)
	test -x /usr/bin/chromium && command -v docker-compose >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium docker-compose)
	touch $@

# Debian's PostgreSQL and Redis: the end-to-end test of the Celery topology runs them as local processes (a
# throwaway cluster and server of its own; the packages' own services are not used). Only when missing.
$(CELERY_STAMP): $(PY_STAMP)
	dpkg -s postgresql redis-server >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql redis-server)
	touch $@

setup: $(PY_STAMP) $(NODE_STAMP) $(DEBIAN_STAMP) $(CELERY_STAMP)

# lint-imports: the trust zones' import contracts (pyproject.toml, docs/architecture.md).
test: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m 'not slow'

demo: setup
	$(BIN)/securetrain demo

airflow: setup
	$(BIN)/securetrain stack up
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/securetrain airflow standalone

bench: setup
	$(BIN)/python -m benchmarks

stack-up: setup
	$(BIN)/securetrain stack up

stack-down:
	-$(BIN)/securetrain stack down

clean: stack-down
	rm -rf $(VENV) node_modules .securetrain
