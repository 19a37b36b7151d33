# toolcrib: `make run` and `make test` do all the set-up on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= toolcrib/demo/toolcrib.toml
NODE_DIR := .tools/node
# the demo config's git repository, next to it (its servers run with cwd = the config's folder)
DEMO_REPO := toolcrib/demo/.toolcrib/demo-repo

.PHONY: install browser run test lint typecheck pytest test-postgres replicas conformance load bench profile fuzz clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[demo,dev]'
	touch $(STAMP)

install: $(STAMP)

$(DEMO_REPO)/.git:
	mkdir -p $(DEMO_REPO)
	git -C $(DEMO_REPO) init -q
	printf '# demo repository\n\nCreated by make run for the git MCP server.\n' > $(DEMO_REPO)/README.md
	git -C $(DEMO_REPO) add README.md
	git -C $(DEMO_REPO) -c user.name=toolcrib -c user.email=demo@toolcrib.invalid commit -qm "demo: first commit"

run: $(STAMP) $(DEMO_REPO)/.git
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/toolcrib --config $(CONFIG) serve

lint: $(STAMP)
	$(BIN)/ruff format --check toolcrib tests benchmarks
	$(BIN)/ruff check toolcrib tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

# Tests run in TEST_JOBS processes (pytest-xdist): most of their time is spent waiting on the real
# servers they start, so 3 keep 2 cores busy.
TEST_JOBS ?= 3
pytest: $(STAMP)
	$(BIN)/pytest -q -n $(TEST_JOBS) -m "not replicas"

# The end-to-end suite again with every in-process gateway's state (audit, approvals, keys, pins,
# sessions, index) in PostgreSQL: a throw-away cluster per test process from the machine's server
# binaries (tests/pgcluster.py), a fresh database per test.
test-postgres: $(STAMP)
	TOOLCRIB_TEST_STORAGE=postgresql $(BIN)/pytest -q -n $(TEST_JOBS) -m "not replicas" tests/e2e

# Scale-out: two in-process replicas on one PostgreSQL (shared sessions, the attack review), and
# three `toolcrib serve` replicas behind a real nginx: a session alternating replicas, an approval
# granted on another replica, key revocation everywhere, SIGKILL under load.
replicas: $(STAMP)
	$(BIN)/pytest -q -n $(TEST_JOBS) -m replicas tests/e2e

# The console's browser tests drive Debian's Chromium (Playwright's own browser download cannot work
# offline): installed here when missing and we may (root + apt-get); otherwise those tests skip.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then apt-get update -q && apt-get install -y -q chromium; \
	  else echo "note: the console's browser tests skip without Chromium: sudo apt-get install chromium"; fi; }

test: lint typecheck browser pytest

clean:
	rm -rf $(VENV) .tools .toolcrib

# The official MCP conformance suite (@modelcontextprotocol/conformance, pinned in
# tests/conformance/toolchain.py; Node 22 and the suite install into .tools/ from npm on first use),
# scored by its frozen 2025-11-25 and 2026-07-28 requirement sets. Server leg: the everything fixture
# directly and toolcrib (passthrough) in front of it, both upstream eras, compared check by check;
# client leg: toolcrib as the client (tests/conformance/client.py). Baselines:
# tests/conformance/expected-failures/<revision>.yaml. Results, logs and summary.json go to
# CONFORMANCE_OUT; CONFORMANCE_ARGS="--leg server --revision 2026-07-28" narrows a run.
CONFORMANCE_OUT ?= .toolcrib/conformance
CONFORMANCE_ARGS ?=
conformance: $(STAMP)
	$(BIN)/python -m tests.conformance.run -o $(CONFORMANCE_OUT) $(CONFORMANCE_ARGS)

# Benchmarks (reports in benchmarks/results/): token savings over 10..5000-tool catalogs and a quick
# latency run (direct vs toolcrib vs mcp-proxy, installed into .tools/mcp-proxy-venv on first use).
bench: $(STAMP)
	$(BIN)/python -m benchmarks.tokens
	$(BIN)/python -m benchmarks.latency --quick

# Where the gateway's CPU goes on the echo hot path: py-spy (installed into the venv here) samples a
# gateway process while the raw driver calls it; SPY_ARGS="--transport stdio --mode invoke --concurrency 16".
SPY_ARGS ?=
profile: $(STAMP)
	$(BIN)/python -m pip install -q 'py-spy>=0.4,<0.5'
	$(BIN)/python -m benchmarks.spy $(SPY_ARGS)

# 200 concurrent sessions mixing search_tools and invoke; LOAD_SECONDS=30 make load for a short run.
LOAD_SECONDS ?= 120
load: $(STAMP)
	$(BIN)/python -m benchmarks.load --seconds $(LOAD_SECONDS)

# Property-based fuzzing (hypothesis, tests/fuzz/): the HTTP body parser, the upstream SSE reader, the
# policy matchers, the catalog name sanitiser and the client-config importer, FUZZ_SECONDS (default
# 60) each; one line of statistics per target. `make test` runs the same targets for 1,000 examples.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/python -m tests.fuzz
