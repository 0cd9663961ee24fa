"""Admin for the synced data. Sync runs and the "Sync now" action are added by `sync.admin`."""

from django.contrib import admin
from django.db import models
from django.db.models import Count
from django.template.defaultfilters import truncatechars

from calendars.models import Account, Calendar, Event


class CalendarInline(admin.TabularInline):
    model = Calendar
    fields = ["name", "remote_id", "timezone", "selected", "last_synced_at"]
    readonly_fields = ["name", "remote_id", "timezone", "last_synced_at"]
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "provider", "status", "last_synced_at", "last_error_short"]
    list_filter = ["provider", "status"]
    search_fields = ["name", "owner__username", "url"]
    list_select_related = ["owner"]
    readonly_fields = ["last_synced_at", "last_error", "created_at", "updated_at"]
    # `credentials` is not editable and never shown.
    fields = ["owner", "provider", "name", "url", "username", "status", *readonly_fields]
    inlines = [CalendarInline]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    @admin.display(description="last error", ordering="last_error")
    def last_error_short(self, obj):
        return truncatechars(obj.last_error, 80)


@admin.register(Calendar)
class CalendarAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "account",
        "selected",
        "event_count",
        "timezone",
        "last_synced_at",
        "missing_since",
    ]
    list_filter = ["selected", "account__provider"]
    list_select_related = ["account"]
    search_fields = ["name", "remote_id", "account__name"]
    fields = [
        "account",
        "name",
        "remote_id",
        "color",
        "timezone",
        "selected",
        "last_synced_at",
        "missing_since",
    ]
    readonly_fields = ["account", "remote_id", "last_synced_at", "missing_since"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(event_count=Count("events"))

    @admin.display(description="events", ordering="event_count")
    def event_count(self, obj):
        return obj.event_count

    def has_add_permission(self, request):
        return False  # calendars come from the account's server


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """Read-only: events are a copy of the server's and change only by syncing."""

    list_display = ["summary", "calendar", "start", "end", "all_day", "uid", "recurrence_id"]
    list_filter = ["all_day", "status", "calendar__account__provider"]
    search_fields = ["summary", "uid"]
    list_select_related = ["calendar"]
    # Counting every event on each page of a large table is slow and tells nobody much.
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
