from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from calendars.api import CalendarViewSet, ChangeFeedView, UserFeedRotateView, UserFeedView
from calendars.feeds import calendar_feed
from sync.api import AccountViewSet, SyncViewSet
from sync.events_api import EventViewSet
from sync.webhooks_api import WebhookViewSet

router = DefaultRouter()
router.register("accounts", AccountViewSet, basename="account")
router.register("calendars", CalendarViewSet, basename="calendar")
router.register("events", EventViewSet, basename="event")
router.register("sync", SyncViewSet, basename="sync")
router.register("webhooks", WebhookViewSet, basename="webhook")

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/changes/", ChangeFeedView.as_view(), name="changes"),
    path("api/feed/", UserFeedView.as_view(), name="feed"),
    path("api/feed/rotate/", UserFeedRotateView.as_view(), name="feed-rotate"),
    path("api/", include(router.urls)),
    # Private iCalendar feeds: no login, the secret in the URL is the key.
    path("feeds/<str:secret>.ics", calendar_feed, name="calendar-feed"),
    path("", include("sync.urls")),
]

# Under /api/ even a wrong URL, a request Django refuses (too big) or a crash answers JSON.
handler400 = "caly.api.bad_request"
handler404 = "caly.api.page_not_found"
handler500 = "caly.api.server_error"
