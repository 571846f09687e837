# Two commands matter: `make run` and `make test`. Everything else is a helper for them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOCK := requirements-dev.lock

.PHONY: run test lint typecheck pytest openapi clean security soak install node-install

$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# The Node packages the tests use, pinned by their lock file: the libraries the interop tests
# drive the broker with (openid-client, oauth4webapi, jose) and the OpenID Provider the single
# sign-on tests run (oidc-provider, started by tests/support/oidc_provider.py). Without npm
# the step says so and those tests skip (they fail under CI=true).
NODE_DIR := tests/interop/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed-stamp

$(NODE_STAMP): $(NODE_DIR)/package-lock.json $(NODE_DIR)/package.json
	@if command -v npm >/dev/null; then \
		cd $(NODE_DIR) && timeout 600 npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed-stamp; \
	else \
		echo "npm not found: the Node interop and single sign-on tests will skip"; \
	fi

# The Node example resource service (examples/node: jose only), pinned by its own lock file
# and exercised by tests/test_examples.py; same rule without npm.
EXAMPLE_NODE_DIR := examples/node
EXAMPLE_NODE_STAMP := $(EXAMPLE_NODE_DIR)/node_modules/.installed-stamp

$(EXAMPLE_NODE_STAMP): $(EXAMPLE_NODE_DIR)/package-lock.json $(EXAMPLE_NODE_DIR)/package.json
	@if command -v npm >/dev/null; then \
		cd $(EXAMPLE_NODE_DIR) && timeout 600 npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed-stamp; \
	else \
		echo "npm not found: the Node example tests will skip"; \
	fi

node-install: $(NODE_STAMP) $(EXAMPLE_NODE_STAMP)

run: $(STAMP)
	$(BIN)/broker serve

lint: $(STAMP)
	$(BIN)/ruff check broker tests bench migrations
	$(BIN)/ruff format --check broker tests bench migrations

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) $(NODE_STAMP) $(EXAMPLE_NODE_STAMP)
	$(BIN)/python -m pytest -n 2 --durations=25

test: lint typecheck pytest

# Regenerate the committed OpenAPI document after an intentional API change.
openapi: $(STAMP)
	$(BIN)/broker openapi > docs/openapi.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Every benchmark against its peer, bounded in time (about twenty minutes); writes
# docs/benchmarks.md. Needs wrk (apt-get install wrk); runs needing PostgreSQL are skipped when
# it cannot be reached.
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python bench/all.py

# The masking bench's peers (Presidio's structured anonymizer, Flask, gunicorn) in their own
# virtualenv, bench/.venv-peers, from bench/requirements-bench.lock (hashes pinned): never in
# the development one, never by `make test`. bench/masking.py also makes it when missing.
.PHONY: bench-deps
bench-deps: $(STAMP)
	$(BIN)/python bench/masking.py --install-peers

# The SDK alone: the pii-key-broker-sdk wheel (broker.client, needing only httpx, pyjwt and
# cryptography) for resource services that must not install the server, built from
# broker/client/pyproject.toml by the development environment's hatchling, without an index.
# See docs/sdk.md, "Install".
.PHONY: sdk
sdk: $(STAMP)
	rm -f dist/pii_key_broker_sdk-*.whl
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-index --no-deps \
		--no-build-isolation --wheel-dir dist broker/client
	@ls dist/pii_key_broker_sdk-*.whl

# The fuzzing, attack and fault suites with many more examples, and counts of what was tried.
security: $(STAMP)
	$(BIN)/python tests/security_report.py

# A bounded soak (10 minutes by default; SOAK_ARGS="--seconds 60" for a short check).
soak: $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)
