# Two commands set everything up on a fresh machine:
#   make up     pulumi up of the dev stack (Pulumi.dev.yaml); local Fly emulator when no Fly token is set
#   make test   lint + the whole test suite (what CI runs)
VENV ?= venv
STACK ?= dev

.PHONY: up preview destroy test lint town-tools

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

up: $(VENV)/.installed
	scripts/pulumi.sh up $(STACK)

preview: $(VENV)/.installed
	scripts/pulumi.sh preview $(STACK)

destroy: $(VENV)/.installed
	scripts/pulumi.sh destroy $(STACK)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# The real gt, bd and dolt the town backup tests run (pinned in tools/town/*/go.mod; output in .tools/).
town-tools:
	tools/town/build.sh

tools/node_modules/.installed: tools/package.json tools/package-lock.json
	npm ci --prefix tools --no-audit --no-fund --silent
	touch $@

test: lint tools/node_modules/.installed
	$(VENV)/bin/pytest -q -p no:cacheprovider
