from django.contrib import admin

from calendars.models import Account, Calendar, Event


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "provider", "status", "last_synced_at", "last_error"]
    list_filter = ["provider", "status"]
    search_fields = ["name", "owner__username", "url"]
    readonly_fields = ["last_synced_at", "last_error", "created_at", "updated_at"]
    # `credentials` is not editable and never shown.
    fields = ["owner", "provider", "name", "url", "username", "status", *readonly_fields]


@admin.register(Calendar)
class CalendarAdmin(admin.ModelAdmin):
    list_display = ["name", "account", "selected", "last_synced_at"]
    list_filter = ["selected", "account__provider"]
    search_fields = ["name", "remote_id"]
    readonly_fields = ["sync_token", "ctag", "last_synced_at"]


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["summary", "calendar", "start", "end", "all_day", "uid", "recurrence_id"]
    list_filter = ["all_day", "status"]
    search_fields = ["summary", "uid"]
    list_select_related = ["calendar"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
