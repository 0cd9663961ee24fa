# Caly — the two commands: `make up` (run everything) and `make test` (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export CALY_WORKER_PROCESSES ?= 2
export CALY_WORKER_THREADS ?= 8

.PHONY: up test pytest lint format bench install migrate preflight clean

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

# Development defaults; real deployments set these in the environment.
up: export DJANGO_DEBUG ?= 1
up: export CALY_ALLOW_PRIVATE_URLS ?= 1
up: install
	$(BIN)/python manage.py preflight
	$(BIN)/python manage.py migrate --no-input
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/honcho start --no-prefix -f Procfile \
	  -c web=1,worker=$(CALY_WORKER_PROCESSES),beat=1

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every run gets its own database and its own queues on the shared servers.
test: install lint pytest

# The suite without the lint step; `make pytest PYTEST_ARGS="tests/sync -x"` for a part of it.
pytest: RUN_ID := $(shell date +%s)$(shell echo $$$$)
pytest: install
	CALY_TEST_DATABASE=test_caly_$(RUN_ID) \
	CALY_QUEUE_PREFIX=caly-test-$(RUN_ID) \
	DATABASE_URL=$${DATABASE_URL:-postgres://root@127.0.0.1:5432/postgres} \
	CELERY_BROKER_URL=$${CELERY_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672//} \
	DJANGO_SECRET_KEY=$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(40))') \
	CALY_ENCRYPTION_KEY=$$($(BIN)/python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())') \
	CALY_ALLOW_PRIVATE_URLS=1 DJANGO_DEBUG=0 \
	$(BIN)/pytest $(PYTEST_ARGS)

# Benchmarks (never part of `make test`): `make bench BENCH=queue` runs bench/bench_queue.py only.
bench: install
	$(BIN)/python bench/run.py $(BENCH)

clean:
	rm -rf $(VENV) db.sqlite3
