"""Settings of the test suite and of the workers and beat it starts: Caly's own plus two test hooks."""

from caly.settings import *  # noqa: F403
from caly.settings import DATABASES, env

# Concurrent test runs on one server each get their own test database (`make pytest` names it).
DATABASES["default"]["TEST"] = {"NAME": env.str("CALY_TEST_DATABASE", default=None)}

# The queue tests' and benchmarks' fake provider (tests/support/fake_provider.py), next to the
# built-in ones of sync.providers.
CALY_EXTRA_PROVIDERS = {"fake": "tests.support.fake_provider:FakeProvider"}
