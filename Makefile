# Caly — the two commands: `make up` (run everything) and `make test` (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What is installed: production requirements (`make up`), and with them the development ones
# (tests, lint, benchmarks, demo); each is redone when a requirements file it reads changes.
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
export CALY_WORKER_PROCESSES ?= 2
export CALY_WORKER_THREADS ?= 8
# Where `make up` / `make demo` serve the web process (honcho numbers the others from here).
PORT ?= 8000
DEMO_RADICALE_PORT ?= 5232

.PHONY: up demo test pytest lint format bench install install-dev migrate preflight clean browser \
	rabbitmq-setup

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

# requirements-dev.txt starts with -r requirements.txt, so this brings production's up to date too.
$(DEV_STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(STAMP) $(DEV_STAMP)

install: $(STAMP)

install-dev: $(DEV_STAMP)

# Development defaults of `make up` and `make demo`; real deployments set these in the environment.
up demo: export DJANGO_DEBUG ?= 1
up demo: export CALY_ALLOW_PRIVATE_URLS ?= 1
# Ctrl-C: honcho kills what is still running after 5 s, so running syncs hand back sooner.
up demo: export CALY_SHUTDOWN_GRACE_SECONDS ?= 3
# The workers' console shows each sync run as it starts and ends (sync/lifecycle.py).
up demo: export CALY_RUN_LOG_LEVEL ?= INFO
up: install
	$(BIN)/python manage.py preflight
	$(BIN)/python manage.py migrate --no-input
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/honcho start --no-prefix -f Procfile -p $(PORT) \
	  -c web=1,worker=$(CALY_WORKER_PROCESSES),webhooks=1,beat=1

# Everything `make up` does, plus a local Radicale with sample calendars, a demo user and
# account and a first sync (sync/management/commands/demo.py); it prints where to log in.
# Radicale comes with the development requirements.
demo: install-dev
	$(BIN)/python manage.py preflight
	$(BIN)/python manage.py migrate --no-input
	mkdir -p .demo
	{ cat Procfile; echo "demo: python manage.py demo --web-url http://127.0.0.1:$(PORT)/ --radicale-port $(DEMO_RADICALE_PORT)"; } > .demo/Procfile
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/honcho start --no-prefix -f .demo/Procfile -d . \
	  -p $(PORT) -c web=1,worker=$(CALY_WORKER_PROCESSES),webhooks=1,beat=1,demo=1

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every run gets its own database and its own queues on the shared servers.
test: install-dev lint pytest

# The suite without the lint step; `make pytest PYTEST_ARGS="tests/sync -x"` for a part of it.
# tests/settings.py (the suite's settings, also those of the workers it starts) names the test
# database after CALY_TEST_DATABASE.
pytest: RUN_ID := $(shell date +%s)$(shell echo $$$$)
pytest: install-dev browser
	DJANGO_SETTINGS_MODULE=tests.settings \
	CALY_TEST_DATABASE=test_caly_$(RUN_ID) \
	CALY_QUEUE_PREFIX=caly-test-$(RUN_ID) \
	DATABASE_URL=$${DATABASE_URL:-postgres://root@127.0.0.1:5432/postgres} \
	CELERY_BROKER_URL=$${CELERY_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672//} \
	DJANGO_SECRET_KEY=$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(40))') \
	CALY_ENCRYPTION_KEY=$$($(BIN)/python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())') \
	CALY_ALLOW_PRIVATE_URLS=1 DJANGO_DEBUG=0 \
	$(BIN)/pytest $(PYTEST_ARGS)

# Benchmarks (never part of `make test`): `make bench BENCH=queue` runs bench/bench_queue.py only.
bench: install-dev
	$(BIN)/python bench/run.py $(BENCH)

# Headless Chromium and its driver (Debian packages) for the dashboard's browser test.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing chromium and chromium-driver for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver >/dev/null; }

# Production RabbitMQ, run as root on its host: the management plugin (web UI and HTTP API on
# port 15672), an administrator other than guest, and a vhost and user for Caly. Passwords are
# read from the environment and handed to rabbitmqctl on standard input, never as arguments.
# Safe to run again: users that exist keep their passwords. RABBITMQ_DELETE_GUEST=1 also
# removes the guest user (make up and make test use it: not on a development machine).
RABBITMQ_ADMIN_USER ?= admin
RABBITMQ_CALY_USER ?= caly
RABBITMQ_VHOST ?= caly
rabbitmq-setup:
	@set -euo pipefail; \
	if [ -z "$${RABBITMQ_ADMIN_PASSWORD:-}" ] || [ -z "$${RABBITMQ_CALY_PASSWORD:-}" ]; then \
	  echo "Set RABBITMQ_ADMIN_PASSWORD and RABBITMQ_CALY_PASSWORD (users: RABBITMQ_ADMIN_USER=$(RABBITMQ_ADMIN_USER), RABBITMQ_CALY_USER=$(RABBITMQ_CALY_USER))."; \
	  exit 2; fi; \
	add_user() { \
	  if rabbitmqctl -q list_users | cut -f1 | grep -qx "$$1"; then \
	    echo "user $$1 exists; password unchanged (rabbitmqctl change_password $$1 to change it)"; \
	  else printf '%s' "$$2" | rabbitmqctl -q add_user "$$1" >/dev/null; echo "user $$1 created"; fi; }; \
	rabbitmq-plugins -q enable rabbitmq_management; \
	rabbitmqctl -q add_vhost "$(RABBITMQ_VHOST)"; \
	add_user "$(RABBITMQ_ADMIN_USER)" "$$RABBITMQ_ADMIN_PASSWORD"; \
	rabbitmqctl -q set_user_tags "$(RABBITMQ_ADMIN_USER)" administrator; \
	for vhost in / "$(RABBITMQ_VHOST)"; do \
	  rabbitmqctl -q set_permissions -p "$$vhost" "$(RABBITMQ_ADMIN_USER)" '.*' '.*' '.*'; done; \
	add_user "$(RABBITMQ_CALY_USER)" "$$RABBITMQ_CALY_PASSWORD"; \
	rabbitmqctl -q set_permissions -p "$(RABBITMQ_VHOST)" "$(RABBITMQ_CALY_USER)" '.*' '.*' '.*'; \
	if [ "$${RABBITMQ_DELETE_GUEST:-0}" = 1 ]; then rabbitmqctl -q delete_user guest; echo "user guest deleted"; fi; \
	echo "Management UI: http://<this host>:15672/ (log in as $(RABBITMQ_ADMIN_USER))"; \
	echo "Caly: CELERY_BROKER_URL=amqp://$(RABBITMQ_CALY_USER):<password>@<this host>:5672/$(RABBITMQ_VHOST)"

clean:
	rm -rf $(VENV) db.sqlite3
