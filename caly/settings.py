"""Django settings for Caly; every value that differs between machines comes from the environment."""

from pathlib import Path

import environ
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from caly.queues import durable_queue

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG = env.bool("DJANGO_DEBUG", default=False)


def _required_secret(name: str, debug_default: str) -> str:
    """A secret may only fall back to a development value while DEBUG is on."""
    value = env.str(name, default="")
    if value:
        return value
    if DEBUG:
        return debug_default
    raise ImproperlyConfigured(
        f"{name} is not set. Set it in the environment (DJANGO_DEBUG=1 allows a development default)."
    )


SECRET_KEY = _required_secret("DJANGO_SECRET_KEY", "caly-development-only-secret-key")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

# Behind TLS (directly or via a proxy that sets X-Forwarded-Proto): cookies only over HTTPS, HSTS.
CALY_HTTPS = env.bool("CALY_HTTPS", default=False)
if CALY_HTTPS:
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = env.int("CALY_HSTS_SECONDS", default=30 * 24 * 3600)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    # Swagger UI's files, served from here: /api/docs/ needs no CDN (SPECTACULAR_SETTINGS).
    "drf_spectacular_sidecar",
    "django_celery_results",
    "django_celery_beat",
    "calendars",
    "sync",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "caly.urls"
WSGI_APPLICATION = "caly.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Workers are threads in several processes: take the write lock when a transaction starts so
    # that read-then-write sections (leases, coalescing) serialise instead of failing mid-way.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"transaction_mode": "IMMEDIATE", "timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"}
    )
else:
    # Web requests close their connection when they end (the development server gives every
    # request a thread of its own). A worker's pool threads live as long as the worker, so
    # caly/celery.py lets each keep its connection for CALY_WORKER_DB_CONN_MAX_AGE: one per slot,
    # and no new PostgreSQL backend (costlier than a no-change sync) for every run.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CALY_DB_CONN_MAX_AGE", default=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
CALY_WORKER_DB_CONN_MAX_AGE = env.int("CALY_WORKER_DB_CONN_MAX_AGE", default=300)
# Celery's Django fixup closes the task thread's database connection before and after every
# task unless this is set; it then does so only once per this many tasks of the process, and
# the task_postrun hook in caly/celery.py closes connections by age or error as Django does.
CELERY_DB_REUSE_MAX = env.int("CALY_WORKER_DB_REUSE_MAX", default=1000)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# The admin shows times in TIME_ZONE, labelled with it (caly/formats/en/formats.py); the
# dashboard shows the browser's local time and names its zone.
FORMAT_MODULE_PATH = ["caly.formats"]

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# The dashboard's own sign-in page: the admin's accepts staff only.
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    # Every record is scrubbed of credentials and capped in length (caly/scrub.py); Celery
    # workers put the same filter on their own handlers (caly/celery.py).
    "filters": {"scrub": {"()": "caly.scrub.ScrubFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["scrub"]},
    },
    "root": {"handlers": ["console"], "level": env.str("CALY_LOG_LEVEL", default="INFO")},
    "loggers": {
        # python-caldav logs request bodies and URLs at DEBUG; never let them through.
        "caldav": {"level": "WARNING"},
        "niquests": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
        # The Google client logs request URLs (sync and page tokens) and google-auth token
        # exchanges at DEBUG.
        "googleapiclient": {"level": "WARNING"},
        "google": {"level": "WARNING"},
        # A worker's line for every task received and succeeded: hundreds a second when busy,
        # each one scrubbed, formatted and written, for what the sync runs and the task history
        # already record. Failures are logged at ERROR, whatever this says.
        "celery.app.trace": {"level": env.str("CALY_TASK_LOG_LEVEL", default="WARNING")},
        "celery.worker.strategy": {"level": env.str("CALY_TASK_LOG_LEVEL", default="WARNING")},
        # A worker's line as each sync run starts and ends (sync/lifecycle.py): off unless asked
        # for, for the same reason; `make up` and `make demo` show them.
        "caly.runs": {"level": env.str("CALY_RUN_LOG_LEVEL", default="WARNING")},
        # runserver's access log has a logger of its own; scrub it too (OAuth callback codes).
        "django.server": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "caly.api.exception_handler",
    "DEFAULT_PARSER_CLASSES": [
        "caly.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    # POST /api/accounts/ (contacts the user's server) and POST /api/sync/ (queues work) are
    # limited, per user; the views name their scope. Reading events is limited too (its view
    # adds the throttle): a window's recurring events are worked out on every request.
    "DEFAULT_THROTTLE_CLASSES": ["caly.throttling.PostRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "account_connect": env.str("CALY_THROTTLE_ACCOUNTS", default="30/minute"),
        "sync_request": env.str("CALY_THROTTLE_SYNC", default="120/minute"),
        "event_read": env.str("CALY_THROTTLE_EVENTS", default="60/minute"),
        "event_write": env.str("CALY_THROTTLE_WRITES", default="300/minute"),
    },
}
# Throttle counts live here, so every web process must see the same cache: by default a table
# in the database (created by `migrate`); CALY_CACHE_URL names another (rediscache://...).
# The database cache evicts live entries past MAX_ENTRIES (300 unless told): that would forget
# the counts of users who posted within the last minute, so it holds 10,000.
CACHES = {
    "default": env.cache_url("CALY_CACHE_URL", default="dbcache://caly_cache?max_entries=10000")
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Caly API",
    "DESCRIPTION": (
        "Connect calendar accounts, request syncs, read and write the synced calendars, follow "
        "their changes (webhooks, change feed)."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Webhook event types: one name whether a webhook or a delivery shows them.
    "ENUM_NAME_OVERRIDES": {"WebhookEventType": "sync.models.Webhook.Type"},
    # /api/docs/ works without internet: Swagger UI from drf-spectacular-sidecar's static files,
    # and no validator badge fetched from swagger.io.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
}

# --- Caly -----------------------------------------------------------------------------------
# Fernet keys, comma-separated; the first encrypts, all decrypt (rotation).
CALY_ENCRYPTION_KEYS = env.list("CALY_ENCRYPTION_KEY", default=[]) or [
    _required_secret("CALY_ENCRYPTION_KEY", "ZGV2ZWxvcG1lbnQtb25seS1rZXktMzItYnl0ZXMhISE=")
]
try:
    [Fernet(key.encode()) for key in CALY_ENCRYPTION_KEYS]
except ValueError:
    # Refuse to start rather than fail on the first account; never echo the value.
    raise ImproperlyConfigured(
        "CALY_ENCRYPTION_KEY must be one or more comma-separated Fernet keys (make one with: "
        'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())")'
    ) from None
CALY_ALLOW_PRIVATE_URLS = env.bool("CALY_ALLOW_PRIVATE_URLS", default=False)
CALY_HTTP_TIMEOUT = env.float("CALY_HTTP_TIMEOUT", default=30.0)
# The timeout above bounds each wait for a packet; these bound one whole response, so a server
# that trickles or streams forever cannot hold a worker: the time from sending a request to its
# last header plus the time spent waiting for its body, its size when read into memory, and its
# size when parsed as it streams in.
CALY_HTTP_DEADLINE_SECONDS = env.float("CALY_HTTP_DEADLINE_SECONDS", default=300.0)
CALY_HTTP_MAX_RESPONSE_BYTES = env.int("CALY_HTTP_MAX_RESPONSE_BYTES", default=32 * 2**20)
CALY_HTTP_MAX_STREAMED_BYTES = env.int("CALY_HTTP_MAX_STREAMED_BYTES", default=256 * 2**20)
CALY_WORKER_PROCESSES = env.int("CALY_WORKER_PROCESSES", default=2)
CALY_WORKER_THREADS = env.int("CALY_WORKER_THREADS", default=8)
CALY_RESYNC_MINUTES = env.int("CALY_RESYNC_MINUTES", default=15)
# Webhook deliveries: a receiver's answer is awaited this long; a failed delivery is tried
# again after about CALY_WEBHOOK_RETRY_BASE_SECONDS, doubling, for CALY_WEBHOOK_RETRY_HOURS; a
# webhook whose deliveries all failed for that long is deactivated.
CALY_WEBHOOK_TIMEOUT_SECONDS = env.float("CALY_WEBHOOK_TIMEOUT_SECONDS", default=10.0)
CALY_WEBHOOK_RETRY_BASE_SECONDS = env.float("CALY_WEBHOOK_RETRY_BASE_SECONDS", default=30.0)
CALY_WEBHOOK_RETRY_HOURS = env.float("CALY_WEBHOOK_RETRY_HOURS", default=24.0)
# Google push: where Google can reach Caly (https; http only on loopback, as tests do). Unset:
# no channels, polling only. Channels live CALY_PUSH_CHANNEL_TTL_SECONDS and are renewed when
# less than CALY_PUSH_RENEW_BEFORE_SECONDS is left; an account whose calendars all push is
# polled every CALY_PUSH_RESYNC_MINUTES instead of CALY_RESYNC_MINUTES.
CALY_PUBLIC_URL = env.str("CALY_PUBLIC_URL", default="")
CALY_PUSH_CHANNEL_TTL_SECONDS = env.int("CALY_PUSH_CHANNEL_TTL_SECONDS", default=7 * 24 * 3600)
CALY_PUSH_RENEW_BEFORE_SECONDS = env.int("CALY_PUSH_RENEW_BEFORE_SECONDS", default=24 * 3600)
CALY_PUSH_RESYNC_MINUTES = env.int("CALY_PUSH_RESYNC_MINUTES", default=6 * 60)
# How long the change feed keeps changes (deletions included); an older cursor is a 410.
CALY_CHANGES_RETENTION_DAYS = env.int("CALY_CHANGES_RETENTION_DAYS", default=30)
# A running sync holds a per-account lease; it is renewed every third of this and lapses if
# the worker dies, so another worker can take over.
CALY_LEASE_SECONDS = env.int("CALY_LEASE_SECONDS", default=60)
# The reaper sends a queued run's message again when it was published this long ago and no
# worker took it (the message was lost); a duplicate of a run that did start is harmless.
CALY_REPUBLISH_AFTER_SECONDS = env.int("CALY_REPUBLISH_AFTER_SECONDS", default=15 * 60)
# A sync stops at the next batch boundary after this long and continues as a retry: RabbitMQ
# closes the channel of a message held unacknowledged longer than its consumer_timeout (30 min by
# default), which would redeliver the message and restart the worker's connection.
CALY_SYNC_DEADLINE_SECONDS = env.int("CALY_SYNC_DEADLINE_SECONDS", default=15 * 60)
# Transient provider errors (timeouts, 429, 5xx) are retried this many times in all, waiting
# a random time up to CALY_RETRY_BASE_SECONDS * 2**n (at most CALY_RETRY_MAX_SECONDS), or what
# the server asked for with Retry-After if that is longer.
CALY_SYNC_MAX_ATTEMPTS = env.int("CALY_SYNC_MAX_ATTEMPTS", default=5)
CALY_RETRY_BASE_SECONDS = env.float("CALY_RETRY_BASE_SECONDS", default=5.0)
CALY_RETRY_MAX_SECONDS = env.int("CALY_RETRY_MAX_SECONDS", default=15 * 60)
# On SIGTERM a worker lets its running syncs finish for this long, then hands the rest back to
# the queue at their next batch boundary; the process exits once every slot is free.
CALY_SHUTDOWN_GRACE_SECONDS = env.float("CALY_SHUTDOWN_GRACE_SECONDS", default=20.0)
# Providers beyond the built-in ones (sync.providers), name -> "module:Class"; set in a settings
# module, never from the environment (tests/settings.py adds the test suite's fake).
CALY_EXTRA_PROVIDERS: dict[str, str] = {}
CALY_SYNC_BATCH_SIZE = env.int("CALY_SYNC_BATCH_SIZE", default=500)
# What one GET /api/events/?start&end may work out before it answers 400 "narrow the window":
# recurring series overlapping the window, and occurrences of their rules from each series'
# first one to the window's end (dateutil steps through all of them to reach the window).
CALY_MAX_SERIES = env.int("CALY_MAX_SERIES", default=1000)
CALY_MAX_OCCURRENCES = env.int("CALY_MAX_OCCURRENCES", default=50_000)
CALY_GOOGLE_CLIENT_ID = env.str("CALY_GOOGLE_CLIENT_ID", default="")
CALY_GOOGLE_CLIENT_SECRET = env.str("CALY_GOOGLE_CLIENT_SECRET", default="")
CALY_GOOGLE_API_ENDPOINT = env.str("CALY_GOOGLE_API_ENDPOINT", default="")
CALY_GOOGLE_TOKEN_URI = env.str(
    "CALY_GOOGLE_TOKEN_URI", default="https://oauth2.googleapis.com/token"
)
# The consent page of the OAuth web flow, and where it sends the user back (default: this
# site's /google/callback/ as the request saw it; set it behind a proxy that rewrites hosts).
CALY_GOOGLE_AUTH_URI = env.str(
    "CALY_GOOGLE_AUTH_URI", default="https://accounts.google.com/o/oauth2/v2/auth"
)
CALY_GOOGLE_REDIRECT_URI = env.str("CALY_GOOGLE_REDIRECT_URI", default="")
# Google allows 600 Calendar API requests a minute per user; all workers together stay under
# this budget, with a margin for the time between granting a request and Google counting it.
CALY_GOOGLE_USER_REQUESTS = env.int("CALY_GOOGLE_USER_REQUESTS", default=500)
CALY_GOOGLE_USER_WINDOW_SECONDS = env.float("CALY_GOOGLE_USER_WINDOW_SECONDS", default=60.0)
# A request waits this long at most for the budget or a throttled retry; beyond that the sync
# goes back to the queue and retries later.
CALY_GOOGLE_MAX_WAIT_SECONDS = env.float("CALY_GOOGLE_MAX_WAIT_SECONDS", default=5.0)

# --- Celery ---------------------------------------------------------------------------------
# Every queue's name starts with this, so test runs and benchmarks can share a broker with others.
CALY_QUEUE_PREFIX = env.str("CALY_QUEUE_PREFIX", default="caly")
CALY_SYNC_QUEUE = f"{CALY_QUEUE_PREFIX}.sync"
CALY_MAINTENANCE_QUEUE = f"{CALY_QUEUE_PREFIX}.maintenance"
CALY_WEBHOOK_QUEUE = f"{CALY_QUEUE_PREFIX}.webhooks"
# Classic queues put a requeued message back at its original position, which keeps the
# start-order promise; quorum queues (replicated, for a RabbitMQ cluster) return it to the back
# unless a delivery-limit is set, so they are opt-in.
CALY_QUEUE_TYPE = env.str("CALY_QUEUE_TYPE", default="classic")

# RabbitMQ: the queues of syncs and of beat's periodic tasks.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="amqp://guest:guest@localhost:5672//")
# Keep reconnecting at start-up and after a broker restart instead of exiting.
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# Publisher confirms: a publish returns only once RabbitMQ has taken the message.
CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
# A web request must not hang on a dead broker: retry a little, then fail with a clear error.
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}
# Ack after the task ran, so a message whose worker died is redelivered.
CELERY_TASK_ACKS_LATE = True
# Only the prefork pool acts on this (a child killed mid-task requeues its message); in the
# thread pool the whole process dies and RabbitMQ requeues its unacknowledged messages itself.
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# After a lost broker connection, running syncs carry on: their messages are redelivered and the
# account lease makes the second delivery wait instead of syncing the account twice.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# Celery lowers the prefetch after a reconnection while such syncs run and raises it again as
# new messages are acknowledged; a worker was seen stuck at the lowered prefetch, taking no more
# messages, after its connection was closed mid-load. Off: the new connection prefetches T
# again at once (messages that wait for a slot held by a sync from the lost connection).
CELERY_WORKER_ENABLE_PREFETCH_COUNT_REDUCTION = False
# No time limits: the thread pool cannot enforce them. A sync checks its own deadline between
# batches (CALY_SYNC_DEADLINE_SECONDS) and every HTTP call has a timeout.
# Prefetch exactly one message per slot: a worker never sits on messages others could start.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# JSON only: messages carry ids, and a worker never unpickles what arrives from the broker.
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Task history in the database, shown in the admin by django-celery-results; its backend,
# writing each result in one statement (sync.results).
CELERY_RESULT_BACKEND = "sync.results:ResultBackend"
# The history names each task, its arguments, its worker and the beat entry that sent it.
CELERY_RESULT_EXTENDED = True
# The periodic tasks (sync.resync_stale, celery.backend_cleanup) show as STARTED while they run.
# sync.run_sync opts out (sync/tasks.py): its SyncRun records when it started, and a STARTED
# result would cost a write per run; sync.reap_stale_runs keeps no result at all.
CELERY_TASK_TRACK_STARTED = True
# celery.backend_cleanup (on beat's schedule, daily) deletes the history older than this.
CELERY_RESULT_EXPIRES = env.int("CALY_RESULT_EXPIRES_SECONDS", default=7 * 24 * 3600)
# Beat's schedule lives in the database only, so it can be edited in the admin: rows the sync
# migrations install (0003, 0007). No CELERY_BEAT_SCHEDULE: this scheduler would write its
# entries over those rows, and over the admin's edits, every time beat starts.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Beat's crontab times (the cleanup at 04:00) are UTC, whatever the servers' local time.
CELERY_TIMEZONE = "UTC"
# Worker events are not needed by Caly and cost a message per task state.
CELERY_WORKER_SEND_TASK_EVENTS = False
# Everything but syncs (beat's ticks, the reaper, cleanup) goes here: never behind a sync backlog.
CELERY_TASK_DEFAULT_QUEUE = CALY_MAINTENANCE_QUEUE
# Durable queues, declared the same way by workers and publishers (caly/queues.py). The sync
# workers of the Procfile leave the webhooks queue (-X) to workers of its own, so that a slow
# receiver never holds a sync slot.
CELERY_TASK_QUEUES = [
    durable_queue(name, queue_type=CALY_QUEUE_TYPE)
    for name in (CALY_SYNC_QUEUE, CALY_MAINTENANCE_QUEUE, CALY_WEBHOOK_QUEUE)
]
# Syncs have their queue to themselves.
CELERY_TASK_ROUTES = {
    "sync.run_sync": {"queue": CALY_SYNC_QUEUE, "routing_key": CALY_SYNC_QUEUE},
    "sync.deliver_webhook": {"queue": CALY_WEBHOOK_QUEUE, "routing_key": CALY_WEBHOOK_QUEUE},
}
