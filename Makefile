# Two commands set everything up on a fresh machine:
#   make up     the real `pulumi up` of the dev stack (Pulumi.dev.yaml); local Fly emulator when no Fly token is set
#   make test   lint + the whole test suite (what CI runs)
VENV ?= venv
STACK ?= dev
# VERBOSE=1: `make up` / `make preview` list the guardrails' rules before the run.
VERBOSE ?=
# Test processes: the real CLI spends most of its time waiting on plugins and the emulators, so two
# cores keep more than two runs busy.
TEST_WORKERS ?= 4

.PHONY: up preview destroy refresh recover serve engine town-tools test lint

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

# The Pulumi CLI from Go modules (engine/build.sh; a no-op once built for the pinned version; a `pulumi`
# of the pinned version on PATH is copied instead of compiled: docs/engine.md).
engine:
	engine/build.sh

up: $(VENV)/.installed engine
	scripts/pulumi.sh up $(STACK) $(if $(VERBOSE),--verbose)

preview: $(VENV)/.installed engine
	scripts/pulumi.sh preview $(STACK) $(if $(VERBOSE),--verbose)

destroy: $(VENV)/.installed engine
	scripts/pulumi.sh destroy $(STACK)

refresh: $(VENV)/.installed engine
	scripts/pulumi.sh refresh $(STACK)

# After a crashed run: the stack's stale lock and pending operations cleared (engine/recovery.py).
recover: $(VENV)/.installed engine
	$(VENV)/bin/silo recover $(STACK)

# The provisioning API at 127.0.0.1:8787 on local PostgreSQL and emulators (README "Provisioning API").
serve: $(VENV)/.installed engine
	$(VENV)/bin/silo serve --local

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The real gt, bd and dolt the town backup tests run (tools/town/build.sh: pinned in tools/town/*/go.mod,
# output in .tools/town; a no-op once built for the pinned versions).
town-tools:
	tools/town/build.sh

tools/node_modules/.installed: tools/package.json tools/package-lock.json
	npm ci --prefix tools --no-audit --no-fund --silent
	touch $@

test: lint engine town-tools tools/node_modules/.installed
	$(VENV)/bin/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup
