"""Reads of sync runs, scoped to one user."""

from django.db.models import QuerySet

from sync.models import SyncRun


def runs_for_user(
    *, user, account_id: int | None = None, state: str | None = None
) -> QuerySet[SyncRun]:
    qs = SyncRun.objects.filter(account__owner=user)
    if account_id is not None:
        qs = qs.filter(account_id=account_id)
    if state is not None:
        qs = qs.filter(state=state)
    return qs
