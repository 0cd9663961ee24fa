"""Admin for sync runs and the operator's tools: "Sync now" on accounts, and task results
(django-celery-results) linked to the sync runs they carried, and back."""

from __future__ import annotations

import datetime as dt

from django.contrib import admin, messages
from django.db.models import F, OuterRef, Q, Subquery
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator
from django_celery_results.admin import TaskResultAdmin
from django_celery_results.models import TaskResult

from calendars.admin import AccountAdmin
from calendars.models import Account
from sync import services, wording
from sync.models import PendingWrite, SyncRun, Webhook, WebhookAttempt, WebhookDelivery


def duration_text(value: dt.timedelta | None) -> str:
    """A duration as a person reads it: 850 ms, 12.3 s, 4 min 05 s, 2 h 03 min."""
    if value is None:
        return "—"
    seconds = max(value.total_seconds(), 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress_text(run: SyncRun) -> str:
    if run.state == SyncRun.State.QUEUED:
        return "—"
    calendars = (
        f"{run.calendars_done}/{run.calendars_total} calendars"
        if run.calendars_total
        else "discovering calendars"
    )
    events = "event" if run.events_processed == 1 else "events"
    return f"{calendars}, {run.events_processed:,} {events} read"


def run_link(run_id: int, text: str | None = None) -> str:
    url = reverse("admin:sync_syncrun_change", args=[run_id])
    return format_html('<a href="{}">{}</a>', url, text or f"Sync #{run_id}")


def _task_result_ids():
    return Subquery(TaskResult.objects.filter(task_id=OuterRef("task_id")).values("pk")[:1])


# The admin's lists need the width at 1,400 px: no navigation sidebar beside them (the index
# page and the breadcrumbs lead everywhere).
admin.site.enable_nav_sidebar = False


# --- accounts: "Sync now" and recent syncs --------------------------------------------------
admin.site.unregister(Account)


@admin.register(Account)
class SyncAccountAdmin(AccountAdmin):
    actions = ["sync_now"]
    list_display = [*AccountAdmin.list_display, "latest_sync"]
    readonly_fields = [*AccountAdmin.readonly_fields, "recent_syncs"]
    fields = [*AccountAdmin.fields, "recent_syncs"]

    def get_queryset(self, request):
        latest = SyncRun.objects.filter(account=OuterRef("pk")).order_by("-requested_at", "-id")
        return (
            super()
            .get_queryset(request)
            .annotate(
                latest_run_id=Subquery(latest.values("pk")[:1]),
                latest_run_state=Subquery(latest.values("state")[:1]),
            )
        )

    @admin.display(description="latest sync")
    def latest_sync(self, obj):
        if obj.latest_run_id is None:
            return "—"
        return run_link(obj.latest_run_id, f"#{obj.latest_run_id} {obj.latest_run_state}")

    @admin.display(description="recent syncs")
    def recent_syncs(self, obj):
        runs = SyncRun.objects.filter(account=obj)[:10]
        if not runs:
            return "none yet"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    run_link(run.pk),
                    run.get_trigger_display(),
                    run.get_state_display(),
                    timezone.localtime(run.requested_at).strftime("%Y-%m-%d %H:%M:%S %Z"),
                    duration_text(
                        run.finished_at - run.started_at
                        if run.finished_at and run.started_at
                        else None
                    ),
                    run.error or f"+{run.created} ~{run.updated} -{run.deleted}",
                )
                for run in runs
            ),
        )
        return format_html(
            "<table><tr><th>run</th><th>trigger</th><th>state</th><th>requested</th>"
            "<th>duration</th><th>changes or error</th></tr>{}</table>",
            rows,
        )

    @admin.action(description="Sync now")
    def sync_now(self, request, queryset):
        """Queue a sync of each selected account, exactly as POST /api/sync/ would."""
        queued: list[SyncRun] = []
        for account in queryset.select_related("owner"):
            try:
                queued += services.sync_request(
                    user=account.owner, account=account, trigger=SyncRun.Trigger.ADMIN
                )
            except services.AccountNotSyncable as exc:
                self.message_user(request, str(exc), messages.WARNING)
            except services.BrokerUnavailable as exc:
                self.message_user(request, str(exc), messages.ERROR)
                break
        if queued:
            links = format_html_join(", ", "{}", ((run_link(run.pk),) for run in queued))
            self.message_user(
                request,
                format_html("Queued: {} (a sync already waiting is reused).", links),
                messages.SUCCESS,
            )


# --- sync runs ------------------------------------------------------------------------------
@admin.register(SyncRun)
class SyncRunAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "account",
        "trigger",
        "state",
        "requested_at",
        "queue_wait",
        "duration",
        "progress",
        "changes",
        "task_result",
    ]
    list_display_links = ["id"]
    # Only accounts that have runs are offered, not every account there is.
    list_filter = ["state", "trigger", ("account", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["account__name", "account__owner__username", "task_id", "error"]
    list_select_related = ["account"]
    date_hierarchy = "requested_at"

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                queue_wait_value=F("started_at") - F("requested_at"),
                duration_value=F("finished_at") - F("started_at"),
                task_result_id=_task_result_ids(),
            )
        )

    def get_fields(self, request, obj=None):
        names = [f.name for f in SyncRun._meta.fields if f.name != "id"]
        after = names.index("finished_at") + 1
        names[after:after] = ["queue_wait", "duration", "progress"]
        return [*names, "task_result"]

    def get_readonly_fields(self, request, obj=None):
        return self.get_fields(request, obj)

    @admin.display(description="queue wait", ordering="queue_wait_value")
    def queue_wait(self, obj):
        if obj.started_at is None:
            if obj.state == SyncRun.State.QUEUED:
                return f"{duration_text(timezone.now() - obj.requested_at)} so far"
            return "—"
        return duration_text(obj.started_at - obj.requested_at)

    @admin.display(description="duration", ordering="duration_value")
    def duration(self, obj):
        if obj.started_at is None:
            return "—"
        if obj.finished_at is None:
            return f"{duration_text(timezone.now() - obj.started_at)} so far"
        return duration_text(obj.finished_at - obj.started_at)

    @admin.display(description="progress")
    def progress(self, obj):
        return progress_text(obj)

    @admin.display(description="changes")
    def changes(self, obj):
        if obj.state == SyncRun.State.QUEUED or (obj.started_at and not obj.finished_at):
            return "—"
        return wording.run_changes(obj)

    @admin.display(description="task result")
    def task_result(self, obj):
        result_id = getattr(obj, "task_result_id", None)
        if result_id is None:
            return "—"
        url = reverse("admin:django_celery_results_taskresult_change", args=[result_id])
        # The first part of the id tells tasks apart; the whole of it is on the run's page.
        return format_html('<a href="{}" title="{}">{}…</a>', url, obj.task_id, obj.task_id[:8])

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # a record of what happened; deleting a queued run withdraws it


# --- task results (django-celery-results) -------------------------------------------------
admin.site.unregister(TaskResult)

# Beat's resync tick runs every minute and mostly finds nothing to queue: such results are left
# out of the list unless asked for. The result as the backend stores it (JSON).
IDLE_TICK = Q(
    task_name="sync.resync_stale",
    status="SUCCESS",
    result__in=['{"queued_runs": []}', '{"queued_runs":[]}'],
)


class ShownTasksFilter(admin.SimpleListFilter):
    """What the list shows; by default everything but the resync ticks that queued nothing."""

    title = "shown"
    parameter_name = "show"

    def lookups(self, request, model_admin):
        return [
            ("syncs", "Syncs only"),
            ("beat", "Sent by beat"),
            ("all", "All, idle resync ticks too"),
        ]

    def choices(self, changelist):
        yield {
            "selected": self.value() is None,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": "All but idle resync ticks",
        }
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.value() == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request, queryset):
        value = self.value()
        if value == "all":
            return queryset
        if value == "syncs":
            return queryset.filter(task_name="sync.run_sync")
        if value == "beat":
            return queryset.exclude(periodic_task_name=None).exclude(periodic_task_name="")
        return queryset.exclude(IDLE_TICK)


def shortened(value, length: int):
    """A long value cut to `length` characters, the whole of it (up to a limit) on hover."""
    if not value:
        return "—"
    text = str(value)
    if len(text) <= length:
        return text
    return format_html(
        '<span title="{}">{}</span>', Truncator(text).chars(1000), Truncator(text).chars(length)
    )


@admin.register(TaskResult)
class SyncTaskResultAdmin(TaskResultAdmin):
    """Celery's task history, each result linked to the sync run it carried; a few short columns
    so the list reads at laptop width (the task id, arguments and the rest are on each page)."""

    list_display = [
        "task_name",
        "sent_by",
        "date_done",
        "status",
        "outcome",
        "worker_name",
        "sync_run",
    ]
    list_display_links = ["task_name"]
    list_filter = [ShownTasksFilter, "status", "task_name", "periodic_task_name", "date_done"]
    fieldsets = (
        (None, {"fields": ("sync_run",)}),
        *TaskResultAdmin.fieldsets,
    )

    def get_queryset(self, request):
        runs = SyncRun.objects.filter(task_id=OuterRef("task_id")).values("pk")[:1]
        return super().get_queryset(request).annotate(sync_run_id=Subquery(runs))

    def get_readonly_fields(self, request, obj=None):
        return [*super().get_readonly_fields(request, obj), "sync_run"]

    @admin.display(description="beat entry", ordering="periodic_task_name")
    def sent_by(self, obj):
        return obj.periodic_task_name or "—"

    @admin.display(description="result")
    def outcome(self, obj):
        return shortened(obj.result, 40)

    @admin.display(description="worker", ordering="worker")
    def worker_name(self, obj):
        return shortened(obj.worker, 20)

    @admin.display(description="sync run")
    def sync_run(self, obj):
        run_id = getattr(obj, "sync_run_id", None)
        return run_link(run_id) if run_id is not None else "—"


# --- writes on their way to the servers -----------------------------------------------------
@admin.register(PendingWrite)
class PendingWriteAdmin(admin.ModelAdmin):
    """Events changed through Caly: pending, applied, in conflict or refused, per account."""

    list_display = (
        "id",
        "account",
        "kind",
        "uid",
        "recurrence_id",
        "state",
        "accepted_at",
        "error_text",
    )
    list_filter = ("state", "kind", "account")
    search_fields = ("uid", "href", "error")
    ordering = ("-id",)
    readonly_fields = [f.name for f in PendingWrite._meta.fields]

    def has_add_permission(self, request):
        return False

    @admin.display(description="error", ordering="error")
    def error_text(self, obj):
        return shortened(obj.error, 60)


# --- webhooks and their deliveries ------------------------------------------------------------
class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    readonly_fields = ("at", "status_code", "error", "duration_ms")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    """Every delivery to every webhook, with each attempt (time, answer, error)."""

    list_display = ("id", "webhook", "type", "state", "attempts", "created_at", "delivered_at")
    list_filter = ("state", "type")
    search_fields = ("webhook__url",)
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    inlines = [WebhookAttemptInline]

    def has_add_permission(self, request):
        return False


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "url_text", "active", "failing_since", "created_at")
    list_filter = ("active",)
    search_fields = ("url", "owner__username")
    readonly_fields = ("owner", "events", "failing_since", "created_at")

    @admin.display(description="URL", ordering="url")
    def url_text(self, obj):
        return shortened(obj.url, 60)
