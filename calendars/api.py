"""Read API for calendars and events (and the `selected` switch of a calendar), the URLs of the
private iCalendar feeds and their rotation."""

import base64
import binascii
import datetime as dt
import json

from django.conf import settings
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.permissions import SAFE_METHODS
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import UserRateThrottle
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from calendars import changes as change_feed
from calendars import selectors, services
from calendars.feeds import feed_url
from calendars.models import Calendar, Event


class CalendarSerializer(serializers.ModelSerializer):
    url = serializers.CharField(source="remote_id", read_only=True)
    feed_url = serializers.SerializerMethodField(
        help_text="The calendar's private iCalendar feed, readable without a login by whoever "
        "has the URL; POST rotate-feed/ replaces it."
    )

    class Meta:
        model = Calendar
        fields = [
            "id",
            "account",
            "name",
            "url",
            "color",
            "timezone",
            "selected",
            "writable",
            "last_synced_at",
            "missing_since",
            "feed_url",
        ]
        read_only_fields = [f for f in fields if f != "selected"]

    def get_feed_url(self, obj) -> str:
        secret = services.calendar_feed_secret(calendar=obj)
        request = self.context.get("request")
        if request is None:
            return reverse("calendar-feed", kwargs={"secret": secret})
        return feed_url(request, secret)

    def update(self, instance, validated_data):
        # Only what the request changes: a sync may be storing this calendar's sync token or
        # ctag meanwhile, and writing the whole row back would put the old ones back.
        for name, value in validated_data.items():
            setattr(instance, name, value)
        instance.save(update_fields=list(validated_data))
        return instance


class EventSerializer(serializers.ModelSerializer):
    occurrence_id = serializers.SerializerMethodField(
        help_text=(
            "`<id>:<recurrence_id or ''>`: one per item, also for the occurrences of a series "
            "in a window (which share the series' `id`); the same occurrence has the same "
            "`occurrence_id` in every listing."
        )
    )
    recurrence_id = serializers.SerializerMethodField()
    start_date = serializers.SerializerMethodField(
        help_text="All-day events: the first day (ISO date); null for timed events."
    )
    end_date = serializers.SerializerMethodField(
        help_text=(
            "All-day events: the day after the last one (ISO date, exclusive as iCalendar's "
            "DTEND); null for timed events."
        )
    )
    sync_error = serializers.SerializerMethodField()

    class Meta:
        model = Event
        fields = [
            "id",
            "occurrence_id",
            "calendar",
            "uid",
            "recurrence_id",
            "summary",
            "description",
            "location",
            "start",
            "end",
            "start_date",
            "end_date",
            "all_day",
            "timezone",
            "status",
            "rrule",
            "sync_state",
            "sync_error",
        ]
        read_only_fields = fields

    def get_occurrence_id(self, obj) -> str:
        return f"{obj.pk}:{obj.recurrence_id}"

    def get_recurrence_id(self, obj) -> str | None:
        return obj.recurrence_id or None

    # All-day events are stored from midnight UTC to midnight UTC: their dates are the UTC ones.
    def get_start_date(self, obj) -> dt.date | None:
        return obj.start.astimezone(dt.UTC).date() if obj.all_day and obj.start else None

    def get_end_date(self, obj) -> dt.date | None:
        return obj.end.astimezone(dt.UTC).date() if obj.all_day and obj.end else None

    def get_sync_error(self, obj) -> str | None:
        return obj.sync_error or None


def int_param(request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValidationError({name: ["A whole number is required."]}) from None


def datetime_param(request, name: str):
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:  # well-formed but impossible, such as month 13
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ValidationError({name: ["An ISO 8601 date-time with an offset is required."]})
    return parsed


class FeedURLSerializer(serializers.Serializer):
    url = serializers.URLField(read_only=True)


class CalendarFeedRotatedSerializer(FeedURLSerializer):
    feed_url = serializers.URLField(read_only=True)


@extend_schema_view(
    list=extend_schema(parameters=[OpenApiParameter("account", OpenApiTypes.INT)]),
)
class CalendarViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = CalendarSerializer
    # The model, for the schema generator (it has no user to scope get_queryset to).
    queryset = Calendar.objects.none()
    http_method_names = ["get", "patch", "post", "head", "options"]

    def get_queryset(self):
        return selectors.calendars_for_user(
            user=self.request.user, account_id=int_param(self.request, "account")
        )

    @extend_schema(
        request=None,
        responses={200: CalendarFeedRotatedSerializer},
        description="Replaces the calendar's feed secret: the old feed URL answers 404 from now "
        "on. Answers the new URL, as `url` (like /api/feed/rotate/) and as `feed_url`.",
    )
    @action(detail=True, methods=["post"], url_path="rotate-feed")
    def rotate_feed(self, request, pk=None):
        calendar = self.get_object()
        url = feed_url(request, services.calendar_feed_rotate(calendar=calendar))
        return Response({"url": url, "feed_url": url})


def window_params(request):
    """`start`/`end` of an occurrence window: both or neither, in order, not too far apart."""
    start, end = datetime_param(request, "start"), datetime_param(request, "end")
    if start is None and end is None:
        return None
    if start is None or end is None:
        missing = "start" if start is None else "end"
        raise ValidationError({missing: ["Give both start and end to list occurrences."]})
    if end <= start:
        raise ValidationError({"end": ["Must be after start."]})
    if end - start > selectors.MAX_WINDOW:
        raise ValidationError(
            {"end": [f"The window may span at most {selectors.MAX_WINDOW.days} days."]}
        )
    return start, end


def encode_token(values: list) -> str:
    """An opaque cursor: the values, as URL-safe base64 of their JSON."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode()


def token_param(request, parse, *, what: str):
    """The `cursor` query parameter read back by `parse(values)` (which raises ValueError or
    TypeError for values it does not accept); None without one; a 400 for anything else."""
    value = request.query_params.get("cursor")
    if value in (None, ""):
        return None
    try:
        return parse(json.loads(base64.urlsafe_b64decode(value.encode())))
    except (ValueError, TypeError, binascii.Error):  # JSONDecodeError is a ValueError
        raise ValidationError(
            {"cursor": [f"Not a cursor this {what} gave out; start again without one."]}
        ) from None


def encode_cursor(key: selectors.OccurrenceKey) -> str:
    start, event_id, recurrence_id = key
    return encode_token([start.isoformat(), event_id, recurrence_id])


def _occurrence_key(values) -> selectors.OccurrenceKey:
    start, event_id, recurrence_id = values
    start = parse_datetime(start)
    if start is None or start.tzinfo is None or type(event_id) is not int:
        raise ValueError
    return start, event_id, str(recurrence_id)


def cursor_param(request) -> selectors.OccurrenceKey | None:
    """The `cursor` of a window's next page: where the previous page stopped."""
    return token_param(request, _occurrence_key, what="listing")


class EventReadThrottle(UserRateThrottle):
    """Per-user limit on reading events (scope `event_read`); other methods are not counted.

    Rates are read when a request comes in, as caly.throttling.PostRateThrottle does.
    """

    scope = "event_read"

    def allow_request(self, request, view):
        if request.method not in SAFE_METHODS:
            return True
        return super().allow_request(request, view)

    def get_rate(self):
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)


@extend_schema_view(
    list=extend_schema(
        description=(
            "Without start/end: the stored events (recurring masters and overridden instances "
            "as rows). With both: every occurrence overlapping [start, end), recurring events "
            "expanded (same uid, each with its own start/end and recurrence_id), cancelled "
            "occurrences left out, soonest first, as pages of `results` with the `next` page's "
            "URL (a `cursor`; no count). A window whose recurring events take more than "
            "CALY_MAX_SERIES series or CALY_MAX_OCCURRENCES occurrences to work out is a 400 "
            "naming `end`: narrow it, or ask for one calendar."
        ),
        parameters=[
            OpenApiParameter("calendar", OpenApiTypes.INT),
            OpenApiParameter("start", OpenApiTypes.DATETIME),
            OpenApiParameter("end", OpenApiTypes.DATETIME),
            OpenApiParameter("cursor", OpenApiTypes.STR),
        ],
    ),
)
class EventViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = EventSerializer
    queryset = Event.objects.none()
    throttle_classes = [*api_settings.DEFAULT_THROTTLE_CLASSES, EventReadThrottle]

    def get_queryset(self):
        return selectors.events_for_user(
            user=self.request.user, calendar_id=int_param(self.request, "calendar")
        )

    def list(self, request, *args, **kwargs):
        window = window_params(request)
        if window is None:
            return super().list(request, *args, **kwargs)
        page_size = api_settings.PAGE_SIZE
        try:
            # One more than a page tells whether there is a next one.
            occurrences = selectors.events_in_window(
                user=request.user,
                start=window[0],
                end=window[1],
                limit=page_size + 1,
                after=cursor_param(request),
                calendar_id=int_param(request, "calendar"),
            )
        except selectors.TooMuchToExpand as exc:
            raise ValidationError({"end": [str(exc)]}) from None
        page, more = occurrences[:page_size], len(occurrences) > page_size
        next_url = None
        if more:
            cursor = encode_cursor(selectors.occurrence_key(page[-1]))
            next_url = replace_query_param(request.build_absolute_uri(), "cursor", cursor)
        return Response({"next": next_url, "results": self.get_serializer(page, many=True).data})


# --- the merged iCalendar feed -----------------------------------------------------------
class UserFeedView(APIView):
    """`GET /api/feed/`: the URL of the user's merged feed, every selected calendar in one."""

    @extend_schema(responses={200: FeedURLSerializer})
    def get(self, request):
        return Response({"url": feed_url(request, services.user_feed_secret(user=request.user))})


class UserFeedRotateView(APIView):
    """`POST /api/feed/rotate/`: a new secret for the merged feed; the old URL answers 404."""

    @extend_schema(request=None, responses={200: FeedURLSerializer})
    def post(self, request):
        return Response({"url": feed_url(request, services.user_feed_rotate(user=request.user))})


# --- the change feed ------------------------------------------------------------------------
class CursorGone(APIException):
    status_code = status.HTTP_410_GONE
    default_code = "cursor_expired"


def encode_feed_cursor(cursor: change_feed.FeedCursor) -> str:
    return encode_token(
        [
            cursor.snapshot,
            cursor.txid,
            cursor.change,
            cursor.read_up_to.isoformat(),
            cursor.after_event,
        ]
    )


def _feed_cursor(values) -> change_feed.FeedCursor:
    snapshot, txid, change, read_up_to, after = values
    read_up_to = parse_datetime(read_up_to)
    if read_up_to is None or not all(type(n) is int for n in (txid, change, after)):
        raise ValueError
    return change_feed.FeedCursor(
        snapshot=bool(snapshot), txid=txid, change=change, read_up_to=read_up_to, after_event=after
    )


def feed_cursor_param(request) -> change_feed.FeedCursor | None:
    return token_param(request, _feed_cursor, what="feed")


class ChangeFeedView(APIView):
    """`GET /api/changes/?cursor=…&limit=…`: the user's event upserts and deletions, oldest
    first. Without a cursor: every current event as an upsert (paged), then what changed since.
    A cursor older than CALY_CHANGES_RETENTION_DAYS is a 410: start again without one."""

    MAX_LIMIT = 1000

    @extend_schema(
        parameters=[
            OpenApiParameter("cursor", OpenApiTypes.STR),
            OpenApiParameter("limit", OpenApiTypes.INT),
        ],
        responses={
            200: inline_serializer(
                "ChangeFeed",
                {
                    "changes": serializers.ListField(child=serializers.DictField()),
                    "cursor": serializers.CharField(),
                    "more": serializers.BooleanField(),
                },
            )
        },
    )
    def get(self, request):
        limit = int_param(request, "limit") or 100
        if not 1 <= limit <= self.MAX_LIMIT:
            raise ValidationError({"limit": [f"Between 1 and {self.MAX_LIMIT}."]})
        try:
            page = change_feed.changes_for_user(
                user=request.user, cursor=feed_cursor_param(request), limit=limit
            )
        except change_feed.CursorExpired:
            raise CursorGone(
                f"This cursor is older than the kept history "
                f"({settings.CALY_CHANGES_RETENTION_DAYS} days); start again without one."
            ) from None
        changes = []
        for kind, item in page.changes:
            if kind == "upsert":
                changes.append({"type": "upsert", "event": EventSerializer(item).data})
            else:
                changes.append(
                    {
                        "type": "delete",
                        "event": {
                            "id": item.event_id,
                            "calendar": item.calendar_id,
                            "uid": item.uid,
                            "recurrence_id": item.recurrence_id or None,
                        },
                    }
                )
        return Response(
            {"changes": changes, "cursor": encode_feed_cursor(page.cursor), "more": page.more}
        )
