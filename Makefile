# One entry point for people and CI. `make dev` runs the local server; `make test` runs every check.
PYTHON ?= python3
VENV := .venv
SAM_VENV := .venv-sam
PY := $(VENV)/bin/python
SAM_ENV := AWS_DEFAULT_REGION=us-east-1 AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing SAM_CLI_TELEMETRY=0
export PYTHONPATH := layers/shared:.
FUNCTION_APPS := $(wildcard functions/*/app.py)

.PHONY: setup dev invoke migrate vendorctl lint format typecheck validate openapi openapi-check pytest test check bench clean bench-cost-export bench-metering bench-load

$(VENV)/.installed: requirements-dev.txt layers/shared/requirements.txt layers/cost_export/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade pip
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# sam-cli pins its own boto3/pydantic, so it lives in a venv of its own.
$(SAM_VENV)/.installed: requirements-sam.txt
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-sam.txt
	touch $@

setup: $(VENV)/.installed $(SAM_VENV)/.installed
	./scripts/ensure-postgres.sh

## Local server on 127.0.0.1:3000 with a throwaway Postgres (or DATABASE_URL), moto and demo data.
dev: $(VENV)/.installed
	./scripts/ensure-postgres.sh
	$(PY) -m local.runner $(ARGS)

## One handler with an events/ fixture: make invoke FN=health EVENT=events/health_get.json
invoke: $(VENV)/.installed
	$(PY) -m local.invoke $(FN) $(EVENT)

## Apply migrations to DATABASE_URL.
migrate: $(VENV)/.installed
	$(PY) -m billing.adapters.postgres.migrate

## Operator CLI: make vendorctl ARGS="catalog validate catalog/catalog.yaml"
vendorctl: $(VENV)/.installed
	$(PY) -m vendorctl $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Every function is its own `app` module, so each is type-checked on its own.
typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy
	@for app in $(FUNCTION_APPS); do $(VENV)/bin/mypy --strict --no-namespace-packages $$app || exit 1; done

validate: $(SAM_VENV)/.installed
	$(SAM_ENV) $(SAM_VENV)/bin/sam validate --lint --template template.yaml
	$(SAM_VENV)/bin/cfn-lint template.yaml

## Regenerate the committed OpenAPI document from the handlers' models.
openapi: $(VENV)/.installed
	$(PY) -m local.openapi_export

openapi-check: $(VENV)/.installed
	$(PY) -m local.openapi_export --check

pytest: $(VENV)/.installed
	./scripts/ensure-postgres.sh
	$(PY) -m pytest -q

## Everything CI runs: lint, types, template, OpenAPI drift, all tests.
test: setup lint typecheck validate openapi-check pytest
check: test

bench: $(VENV)/.installed
	$(PY) bench/ledger.py

## meter-usage events/s through the handler, and the sweep over 100,000 purchases (docs/benchmarks.md):
## make bench-metering ARGS=--quick (smoke run), ARGS="--scenario sweep" (one scenario)
bench-metering: $(VENV)/.installed
	$(PY) bench/metering.py $(ARGS)

## Cost-export ingest vs plain DuckDB on a 2 GB legacy-CUR file (generated once under /tmp): make bench-cost-export ARGS=--quick
bench-cost-export: $(VENV)/.installed
	$(PY) bench/cost_export.py $(ARGS)

## The whole journey over HTTP with 8 clients for 60 s against the local runner, ledger checked after
## (docs/benchmarks.md): make bench-load ARGS=--quick (smoke run), ARGS="--seconds 120 --clients 16"
bench-load: $(VENV)/.installed
	./scripts/ensure-postgres.sh
	$(PY) bench/load.py $(ARGS)

clean:
	rm -rf $(VENV) $(SAM_VENV) .aws-sam .mypy_cache .pytest_cache .ruff_cache .hypothesis
