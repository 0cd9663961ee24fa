"""Read API for calendars and events (and the `selected` switch of a calendar)."""

from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, viewsets
from rest_framework.exceptions import ValidationError

from calendars import selectors
from calendars.models import Calendar, Event


class CalendarSerializer(serializers.ModelSerializer):
    url = serializers.CharField(source="remote_id", read_only=True)

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
            "last_synced_at",
            "missing_since",
        ]
        read_only_fields = [f for f in fields if f != "selected"]


class EventSerializer(serializers.ModelSerializer):
    recurrence_id = serializers.SerializerMethodField()

    class Meta:
        model = Event
        fields = [
            "id",
            "calendar",
            "uid",
            "recurrence_id",
            "summary",
            "description",
            "location",
            "start",
            "end",
            "all_day",
            "timezone",
            "status",
            "rrule",
        ]
        read_only_fields = fields

    def get_recurrence_id(self, obj) -> str | None:
        return obj.recurrence_id or None


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
    http_method_names = ["get", "patch", "head", "options"]

    def get_queryset(self):
        return selectors.calendars_for_user(
            user=self.request.user, account_id=int_param(self.request, "account")
        )


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


@extend_schema_view(
    list=extend_schema(
        description=(
            "Without start/end: the stored events (recurring masters and overridden instances "
            "as rows). With both: every occurrence overlapping [start, end), recurring events "
            "expanded (same uid, each with its own start/end and recurrence_id), cancelled "
            "occurrences left out, soonest first."
        ),
        parameters=[
            OpenApiParameter("calendar", OpenApiTypes.INT),
            OpenApiParameter("start", OpenApiTypes.DATETIME),
            OpenApiParameter("end", OpenApiTypes.DATETIME),
        ],
    ),
)
class EventViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = EventSerializer
    queryset = Event.objects.none()

    def get_queryset(self):
        return selectors.events_for_user(
            user=self.request.user, calendar_id=int_param(self.request, "calendar")
        )

    def list(self, request, *args, **kwargs):
        window = window_params(request)
        if window is None:
            return super().list(request, *args, **kwargs)
        occurrences = selectors.events_in_window(
            user=request.user,
            start=window[0],
            end=window[1],
            calendar_id=int_param(request, "calendar"),
        )
        page = self.paginate_queryset(occurrences)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)
