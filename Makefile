# The README's commands: `make testnet` (first), `make test` (second), `make node`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: node testnet test bench clean-data chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

node: $(STAMP)
	$(BIN)/ledger node $(ARGS)

testnet: $(STAMP)
	$(BIN)/ledger testnet --nodes 4 $(ARGS)

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The explorer's browser tests drive Debian's Chromium; install it when missing and we may.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian's chromium for the browser tests"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "note: /usr/bin/chromium is missing; the browser tests will be skipped"; \
		fi; \
	fi

# The network simulator over many seeds: `make sim SEEDS=1-500 ARGS="--consensus pow --jobs 4"`.
# Prints each failing seed with the command that replays it; exits non-zero if any failed.
SEEDS ?= 1-200
.PHONY: sim
sim: $(STAMP)
	$(BIN)/python -m node.sim --seeds $(SEEDS) $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/throughput.py $(ARGS)

clean-data:
	rm -rf data/node testnet
