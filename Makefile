# The README's commands: `make testnet` (first), `make test` (second), `make node`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: node testnet test test-fast bench clean-data chromium

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

# The unit tier for a developer's loop: no node processes, no browser, no PostgreSQL.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n auto -m "not integration and not browser and not postgres" $(PYTEST_ARGS)

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

# The network simulator over many seeds: `make sim SEEDS=1-500 ARGS="--consensus bft --jobs 2"`
# (solo unless ARGS names an engine).  Prints each failing seed with the command that
# replays it; exits non-zero if any failed.  Byzantine validators (up to f of 3f+1: 1 of 4,
# 2 of 7, 3 of 10): ARGS="--consensus bft --nodes 4 --byzantine 1 --byzantine-kind mix".
SEEDS ?= 1-200
.PHONY: sim sim-all sim-solo sim-pow sim-bft sim-bft4 sim-bft7 sim-bft10 sim-pos sim-pos-byzantine sim-raft
sim: $(STAMP)
	$(BIN)/python -m node.sim --seeds $(SEEDS) $(ARGS)

# Every engine's sweep, each under every fault kind: about 50 minutes on 2 free cores.
# `make -k sim-all` goes on past a failing sweep; ARGS reaches each sweep; the seed ranges
# are variables (`make sim-bft BFT4_SEEDS=1-2000`).  A seed costs roughly 1.5 s (solo),
# 2.5 s (pow, bft with 4 validators, pos), 5 s (7) and 8 s (10) of one core.
SIM_JOBS ?= 2
SOLO_SEEDS ?= 1-200
POW_SEEDS ?= 1-100
BFT4_SEEDS ?= 1-300
BFT7_SEEDS ?= 1-100
BFT10_SEEDS ?= 1-50
POS_SEEDS ?= 1-300
POS7_SEEDS ?= 1-100
RAFT_SEEDS ?= 1-300
SIM := $(BIN)/python -m node.sim --jobs $(SIM_JOBS)
sim-all: sim-solo sim-pow sim-bft sim-pos sim-pos-byzantine sim-raft
sim-bft: sim-bft4 sim-bft7 sim-bft10
sim-solo: $(STAMP)
	$(SIM) --consensus solo --seeds $(SOLO_SEEDS) $(ARGS)
sim-pow: $(STAMP)
	$(SIM) --consensus pow --seeds $(POW_SEEDS) $(ARGS)
sim-bft4: $(STAMP)
	$(SIM) --consensus bft --nodes 4 --seeds $(BFT4_SEEDS) $(ARGS)
sim-bft7: $(STAMP)
	$(SIM) --consensus bft --nodes 7 --seeds $(BFT7_SEEDS) $(ARGS)
sim-bft10: $(STAMP)
	$(SIM) --consensus bft --nodes 10 --seeds $(BFT10_SEEDS) $(ARGS)
sim-pos: $(STAMP)
	$(SIM) --consensus pos --nodes 4 --seeds $(POS_SEEDS) $(ARGS)
# Proof of stake with f of 3f+1 validators Byzantine, every kind of lie mixed: about 13 minutes.
sim-pos-byzantine: $(STAMP)
	$(SIM) --consensus pos --nodes 4 --byzantine 1 --byzantine-kind mix --seeds $(POS_SEEDS) $(ARGS)
	$(SIM) --consensus pos --nodes 7 --byzantine 2 --byzantine-kind mix --seeds $(POS7_SEEDS) $(ARGS)

# Raft with 3 and 5 members: about 9 minutes.
sim-raft: $(STAMP)
	$(SIM) --consensus raft --nodes 3 --seeds $(RAFT_SEEDS) $(ARGS)
	$(SIM) --consensus raft --nodes 5 --seeds $(RAFT_SEEDS) $(ARGS)
	$(SIM) --consensus raft --nodes 4 --membership --seeds $(RAFT_SEEDS) $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/throughput.py $(ARGS)

clean-data:
	rm -rf data/node testnet
