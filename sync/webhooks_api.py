"""Webhooks API: `POST, GET /api/webhooks/`, `GET, DELETE /api/webhooks/{id}/` and
`GET /api/webhooks/{id}/deliveries/` (every delivery with every attempt)."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema, extend_schema_view, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from sync import netguard, services
from sync.models import Webhook, WebhookAttempt, WebhookDelivery


class WebhookSerializer(serializers.ModelSerializer):
    class Meta:
        model = Webhook
        fields = ["id", "url", "events", "active", "failing_since", "created_at"]
        read_only_fields = ["id", "active", "failing_since", "created_at"]


class WebhookCreateSerializer(serializers.Serializer):
    url = serializers.URLField(max_length=2000)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=Webhook.Type.choices), allow_empty=False
    )

    def validate_url(self, value):
        # The same rules as a CalDAV server's address (no private addresses, no credentials).
        try:
            netguard.validate_url(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None
        return value


class WebhookAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookAttempt
        fields = ["at", "status_code", "error", "duration_ms"]


class WebhookDeliverySerializer(serializers.ModelSerializer):
    attempts = WebhookAttemptSerializer(source="tries", many=True, read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = ["id", "type", "data", "state", "created_at", "delivered_at", "attempts"]


@extend_schema_view(
    create=extend_schema(
        request=WebhookCreateSerializer,
        responses={
            201: inline_serializer(
                "WebhookCreated",
                {
                    "id": serializers.IntegerField(),
                    "url": serializers.URLField(),
                    "events": serializers.ListField(child=serializers.CharField()),
                    "active": serializers.BooleanField(),
                    "secret": serializers.CharField(),
                },
            )
        },
        description=(
            "Register an address for `events.changed`, `sync.failed` and "
            "`account.needs_reauth`. The answer carries the signing `secret`, shown this once."
        ),
    ),
    deliveries=extend_schema(responses={200: WebhookDeliverySerializer(many=True)}),
)
class WebhookViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = WebhookSerializer
    queryset = Webhook.objects.none()
    throttle_scope = "account_connect"

    def get_queryset(self):
        return Webhook.objects.filter(owner=self.request.user).order_by("id")

    def create(self, request, *args, **kwargs):
        incoming = WebhookCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        webhook, secret = services.webhook_create(owner=request.user, **incoming.validated_data)
        body = {**WebhookSerializer(webhook).data, "secret": secret}
        return Response(body, status=status.HTTP_201_CREATED)

    @action(detail=True, methods=["get"])
    def deliveries(self, request, pk=None):
        webhook = self.get_object()
        queryset = webhook.deliveries.prefetch_related("tries").order_by("-created_at")
        page = self.paginate_queryset(queryset)
        serializer = WebhookDeliverySerializer(page, many=True)
        return self.get_paginated_response(serializer.data)
