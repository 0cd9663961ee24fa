"""Requesting syncs (sync.services.requests)."""

from __future__ import annotations

import pytest
from kombu.exceptions import OperationalError

from sync import services
from sync.models import SyncRun
from tests.factories import make_account, make_user

pytestmark = pytest.mark.django_db


@pytest.mark.django_db(transaction=True)
def test_a_request_for_every_account_is_all_or_nothing_when_the_broker_fails_part_way(
    monkeypatch,
):
    user = make_user()
    waiting, first, second = (make_account(user, name=n) for n in ("waiting", "first", "second"))
    queued = services.sync_request_account(account=waiting, trigger="api", publish=False)
    published = []

    def publish_run(*, run_id: int, task_id: str, delay: int = 0) -> None:
        if published:  # RabbitMQ goes away after taking the first new run
            raise OperationalError("connection refused")
        published.append(run_id)

    monkeypatch.setattr("sync.broker.publish_run", publish_run)
    with pytest.raises(services.BrokerUnavailable, match="nothing was queued"):
        services.sync_request(user=user, trigger="api")

    # The run that was already queued stays; the one RabbitMQ took is withdrawn (its message
    # finds no run and is dropped, as above); the one it refused was never kept.
    assert list(SyncRun.objects.values_list("pk", flat=True)) == [queued.pk]
    assert len(published) == 1
    assert not SyncRun.objects.filter(account__in=[first, second]).exists()
