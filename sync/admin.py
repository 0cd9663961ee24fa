from django.contrib import admin

from sync.models import SyncRun


@admin.register(SyncRun)
class SyncRunAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "account",
        "trigger",
        "state",
        "requested_at",
        "started_at",
        "finished_at",
        "created",
        "updated",
        "deleted",
    ]
    list_filter = ["state", "trigger"]
    search_fields = ["account__name", "task_id"]
    list_select_related = ["account"]
    readonly_fields = [f.name for f in SyncRun._meta.fields]

    def has_add_permission(self, request):
        return False
