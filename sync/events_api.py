"""Writing events through the API: `POST /api/events/`, `PATCH` and `DELETE /api/events/{id}/`.

Every write answers 202 with the event as stored locally (`sync_state: "pending"`) and reaches
the server through the account's next run (`sync.services.writes`). Reading is
`calendars.api.EventViewSet`'s.
"""

from __future__ import annotations

import datetime as dt

from dateutil.rrule import rrulestr
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import SAFE_METHODS
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle

from calendars import api as calendars_api
from calendars import selectors as calendar_selectors
from calendars.models import Calendar, Event
from calendars.timezones import UTC, iana_zone
from sync.remote import EventValues
from sync.services import writes

MAX_IDEMPOTENCY_KEY = 255


@extend_schema_field(OpenApiTypes.DATETIME)
class MomentField(serializers.Field):
    """An ISO 8601 date-time with an offset, or a date (all-day events)."""

    default_error_messages = {
        "invalid": "An ISO 8601 date-time with an offset (or a date, for all-day events) is required."
    }

    def to_internal_value(self, data):
        if isinstance(data, str):
            try:
                parsed = parse_datetime(data)
            except ValueError:
                parsed = None
            if parsed is not None and parsed.tzinfo is not None:
                return parsed
            try:
                day = parse_date(data)
            except ValueError:
                day = None
            if day is not None:
                return day
        self.fail("invalid")

    def to_representation(self, value):
        return value.isoformat()


class EventWriteSerializer(serializers.Serializer):
    """The fields of an event a client sets; on PATCH each is optional."""

    calendar = serializers.PrimaryKeyRelatedField(queryset=Calendar.objects.none())
    summary = serializers.CharField(max_length=10_000, allow_blank=True)
    description = serializers.CharField(
        max_length=100_000, allow_blank=True, required=False, default=""
    )
    location = serializers.CharField(
        max_length=10_000, allow_blank=True, required=False, default=""
    )
    start = MomentField()
    end = MomentField()
    all_day = serializers.BooleanField(required=False, default=False)
    timezone = serializers.CharField(max_length=100, allow_blank=True, required=False, default="")
    rrule = serializers.CharField(max_length=1000, allow_blank=True, required=False, default="")
    recurrence_id = serializers.CharField(max_length=64, required=False, allow_blank=True)

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["calendar"].queryset = calendar_selectors.calendars_for_user(user=user)
        if self.partial:
            for field in self.fields.values():
                field.default = serializers.empty

    def validate_timezone(self, value):
        if value and value != "UTC" and iana_zone(value) is None:
            raise ValidationError(
                "Not a time zone Caly knows (an IANA name such as Europe/Berlin)."
            )
        return value

    def validate_rrule(self, value):
        value = value.strip().removeprefix("RRULE:")
        if value:
            try:
                rrulestr(value, dtstart=dt.datetime(2000, 1, 1), forceset=False)
            except (ValueError, TypeError):
                raise ValidationError(
                    "Not an iCalendar recurrence rule (RFC 5545 RRULE)."
                ) from None
        return value

    def validate(self, attrs):
        attrs = dict(attrs)
        all_day = attrs.get("all_day")
        # Dates given on a PATCH without all_day: the view checks them against the event.
        self.dates_given = []
        for name in ("start", "end"):
            value = attrs.get(name)
            if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
                if all_day is False or (all_day is None and not self.partial):
                    raise ValidationError({name: ["A date is for all-day events: set all_day."]})
                if all_day is None:
                    self.dates_given.append(name)
                attrs[name] = dt.datetime(value.year, value.month, value.day, tzinfo=UTC)
        if attrs.get("start") and attrs.get("end") and attrs["end"] <= attrs["start"]:
            raise ValidationError({"end": ["Must be after start."]})
        return attrs


class EventWriteThrottle(ScopedRateThrottle):
    """Per-user limit on creating, changing and deleting events (scope `event_write`)."""

    scope_attr = "write_throttle_scope"

    def allow_request(self, request, view):
        if request.method in SAFE_METHODS:
            return True
        return super().allow_request(request, view)

    def get_rate(self):
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)


def _idempotency_key(request) -> str:
    key = request.headers.get("Idempotency-Key", "").strip()
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise ValidationError({"Idempotency-Key": [f"At most {MAX_IDEMPOTENCY_KEY} characters."]})
    return key


def _refused(exc: writes.WriteRefused) -> ValidationError:
    return ValidationError({exc.field: [str(exc)]})


@extend_schema_view(
    create=extend_schema(
        request=EventWriteSerializer,
        responses={202: calendars_api.EventSerializer},
        parameters=[OpenApiParameter("Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER)],
        description=(
            "Create an event; it is stored at once (`sync_state: pending`) and written to the "
            "calendar's server by a worker. The same Idempotency-Key from the same user within "
            "24 h returns the event created first."
        ),
    ),
    partial_update=extend_schema(
        request=EventWriteSerializer,
        responses={202: calendars_api.EventSerializer},
        description=(
            "Change an event. With `recurrence_id` on a recurring event: change that one "
            "occurrence (an override, returned)."
        ),
    ),
    destroy=extend_schema(
        parameters=[OpenApiParameter("recurrence_id", OpenApiTypes.STR)],
        responses={202: calendars_api.EventSerializer},
        description=(
            "Delete an event (or with `recurrence_id` one occurrence): it leaves every listing at "
            "once; GET shows it pending until the server has deleted it, then 404."
        ),
    ),
)
class EventViewSet(calendars_api.EventViewSet):
    """Events: read them (`calendars.api`), and create, change and delete them."""

    write_throttle_scope = "event_write"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    throttle_classes = [*calendars_api.EventViewSet.throttle_classes, EventWriteThrottle]

    def get_queryset(self):
        if self.action != "retrieve":
            return super().get_queryset()
        # One being deleted is still shown (pending) until the server has deleted it.
        return calendar_selectors.events_for_user(user=self.request.user, with_deleting=True)

    def create(self, request, *args, **kwargs):
        incoming = EventWriteSerializer(data=request.data, user=request.user)
        incoming.is_valid(raise_exception=True)
        data = dict(incoming.validated_data)
        calendar = data.pop("calendar")
        data.pop("recurrence_id", None)
        key = _idempotency_key(request)
        try:
            event = writes.event_create(
                calendar=calendar, values=EventValues(**data), idempotency_key=key
            )
        except writes.WriteRefused as exc:
            raise _refused(exc) from None
        return self._accepted(event)

    def partial_update(self, request, *args, **kwargs):
        event = self.get_object()
        incoming = EventWriteSerializer(data=request.data, user=request.user, partial=True)
        incoming.is_valid(raise_exception=True)
        changes = dict(incoming.validated_data)
        recurrence_id = changes.pop("recurrence_id", "")
        all_day = changes.get("all_day", event.all_day)
        for name in incoming.dates_given:
            if not all_day:
                raise ValidationError({name: ["A date is for all-day events: set all_day."]})
        calendar = changes.pop("calendar", None)
        if calendar is not None and calendar.pk != event.calendar_id:
            raise ValidationError({"calendar": ["An event cannot move to another calendar."]})
        try:
            event = writes.event_update(event=event, changes=changes, recurrence_id=recurrence_id)
        except writes.WriteRefused as exc:
            raise _refused(exc) from None
        return self._accepted(event)

    def destroy(self, request, *args, **kwargs):
        event = self.get_object()
        recurrence_id = request.query_params.get("recurrence_id", "")
        try:
            writes.event_delete(event=event, recurrence_id=recurrence_id)
        except writes.WriteRefused as exc:
            raise _refused(exc) from None
        event.refresh_from_db()
        return self._accepted(event)

    def _accepted(self, event: Event) -> Response:
        return Response(calendars_api.EventSerializer(event).data, status=status.HTTP_202_ACCEPTED)
