"""API for connecting accounts (checked against their server) and requesting/inspecting syncs."""

from collections.abc import Mapping

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.response import Response

from calendars import selectors as calendar_selectors
from calendars.api import int_param
from calendars.models import Account
from caly.throttling import PostRateThrottle
from sync import netguard, selectors, services
from sync.models import SyncRun
from sync.providers.base import AuthError, ProviderError


class AccountWriteThrottle(PostRateThrottle):
    """POST and PATCH count alike: connecting an account and changing its URL or username both
    send Caly to the user's server."""

    def allow_request(self, request, view):
        if request.method not in ("POST", "PATCH"):
            return True
        return super(PostRateThrottle, self).allow_request(request, view)


class ServiceUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "service_unavailable"


class AccountSerializer(serializers.ModelSerializer):
    class Meta:
        model = Account
        fields = [
            "id",
            "provider",
            "name",
            "url",
            "username",
            "status",
            "last_synced_at",
            "last_error",
        ]
        read_only_fields = ["id", "status", "last_synced_at", "last_error"]


class AccountCreateSerializer(serializers.Serializer):
    provider = serializers.ChoiceField(choices=Account.Provider.choices)
    name = serializers.CharField(max_length=200)
    url = serializers.URLField(
        max_length=2000,
        required=False,
        allow_blank=True,
        default="",
        validators=[netguard.validate_url],
        help_text="CalDAV: the server root, a principal or a calendar home.",
    )
    username = serializers.CharField(
        max_length=255,
        required=False,
        allow_blank=True,
        default="",
        help_text="CalDAV, if the server needs one.",
    )
    password = serializers.CharField(
        max_length=1000,
        required=False,
        allow_blank=True,
        default="",
        write_only=True,
        trim_whitespace=False,
        style={"input_type": "password"},
        help_text="CalDAV, if the server needs one; never shown again.",
    )
    refresh_token = serializers.CharField(
        max_length=4000,
        required=False,
        default="",
        write_only=True,
        style={"input_type": "password"},
        help_text="Google: an OAuth refresh token; never shown again.",
    )

    def validate(self, attrs):
        if attrs["provider"] == Account.Provider.CALDAV and not attrs["url"]:
            raise ValidationError({"url": ["A CalDAV account needs the server's URL."]})
        if attrs["provider"] == Account.Provider.GOOGLE and not attrs["refresh_token"]:
            raise ValidationError(
                {"refresh_token": ["A Google account needs an OAuth refresh token."]}
            )
        return attrs

    def credentials(self) -> dict:
        data = self.validated_data
        if data["provider"] == Account.Provider.GOOGLE:
            return {"refresh_token": data["refresh_token"]}
        return {"password": data["password"]} if data["password"] else {}


class AccountUpdateSerializer(serializers.Serializer):
    """What a PATCH may change. A field the body names that is not one of these is a 400 naming
    it; which of them an account of each provider takes is the service's to say."""

    name = serializers.CharField(max_length=200, required=False)
    url = serializers.URLField(
        max_length=2000, required=False, allow_blank=True, validators=[netguard.validate_url]
    )
    username = serializers.CharField(max_length=255, required=False, allow_blank=True)
    password = serializers.CharField(
        max_length=1000,
        required=False,
        write_only=True,
        trim_whitespace=False,
        style={"input_type": "password"},
    )
    refresh_token = serializers.CharField(
        max_length=4000, required=False, write_only=True, style={"input_type": "password"}
    )

    # The representation's other fields: shown, never changed by a PATCH.
    READ_ONLY = {
        "id": "An account's id cannot be changed.",
        "provider": "An account's provider cannot be changed; connect a new account instead.",
        "status": "Set by Caly from the account's syncs; new credentials reactivate it.",
        "last_synced_at": "Set by Caly when a sync succeeds.",
        "last_error": "Set by Caly when a sync fails.",
    }
    # What the browsable API's HTML forms post besides the fields.
    IGNORED = frozenset({"csrfmiddlewaretoken"})

    def to_internal_value(self, data):
        given = set(data) - self.IGNORED if isinstance(data, Mapping) else set()
        errors = {
            name: [self.READ_ONLY.get(name, "Not a field of an account.")]
            for name in sorted(given - set(self.fields))
        }
        try:
            value = super().to_internal_value(data)
        except ValidationError as exc:
            if errors and isinstance(exc.detail, dict):
                raise ValidationError({**exc.detail, **errors}) from None
            raise
        if errors:
            raise ValidationError(errors)
        return value


def _provider_error_to_400(exc: ProviderError, provider: str = "") -> ValidationError:
    if isinstance(exc, services.AccountRefused):
        return ValidationError({exc.field: [str(exc)]})
    if provider == Account.Provider.GOOGLE:
        field = "refresh_token" if isinstance(exc, AuthError) else "provider"
    else:
        field = "password" if isinstance(exc, AuthError) else "url"
    return ValidationError({field: [str(exc)]})


@extend_schema_view(
    create=extend_schema(request=AccountCreateSerializer, responses={201: AccountSerializer}),
    partial_update=extend_schema(
        request=AccountUpdateSerializer, responses={200: AccountSerializer}
    ),
)
class AccountViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = AccountSerializer
    # The model, for the schema generator (it has no user to scope get_queryset to).
    queryset = Account.objects.none()
    throttle_scope = "account_connect"
    throttle_classes = [AccountWriteThrottle]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        return calendar_selectors.accounts_for_user(user=self.request.user)

    def get_serializer_class(self):
        # What a client sends, for the browsable API's forms and OPTIONS; answers are always
        # AccountSerializer. By method, as OPTIONS describes POST without changing the action.
        method = self.request.method if self.request is not None else "GET"
        if method == "POST":
            return AccountCreateSerializer
        if method in ("PATCH", "PUT"):
            return AccountUpdateSerializer
        return AccountSerializer

    def create(self, request, *args, **kwargs):
        incoming = AccountCreateSerializer(data=request.data, context=self.get_serializer_context())
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        try:
            account = services.account_connect(
                owner=request.user,
                provider=data["provider"],
                name=data["name"],
                url=data["url"],
                username=data["username"],
                credentials=incoming.credentials(),
            )
        except ProviderError as exc:
            raise _provider_error_to_400(exc, data["provider"]) from None
        return Response(AccountSerializer(account).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        # Its push channels are stopped while its credentials are still there.
        services.channels_stop_for_account(account=instance)
        instance.delete()

    def partial_update(self, request, *args, **kwargs):
        account = self.get_object()
        incoming = AccountUpdateSerializer(data=request.data, context=self.get_serializer_context())
        incoming.is_valid(raise_exception=True)
        data = dict(incoming.validated_data)
        credentials = {k: data.pop(k) for k in ("password", "refresh_token") if k in data}
        try:
            account = services.account_update(account=account, credentials=credentials, **data)
        except ProviderError as exc:
            raise _provider_error_to_400(exc, account.provider) from None
        return Response(AccountSerializer(account).data)


class SyncRunSerializer(serializers.ModelSerializer):
    progress = inline_serializer(
        "SyncProgress",
        fields={
            "calendars_done": serializers.IntegerField(),
            "calendars_total": serializers.IntegerField(),
            "events_processed": serializers.IntegerField(),
            # Through listings of calendars fetched in full (a first sync by listing, say):
            # objects stored as listed so far, of those listed (0 of 0: no listing).
            "objects_done": serializers.IntegerField(),
            "objects_total": serializers.IntegerField(),
        },
        read_only=True,
    )
    # Objects the server sent that could not be read; the rest of the calendar still synced.
    skipped = inline_serializer(
        "SkippedObject",
        fields={
            "calendar": serializers.CharField(),
            "href": serializers.CharField(),
            "reason": serializers.CharField(),
        },
        many=True,
        read_only=True,
    )

    class Meta:
        model = SyncRun
        fields = [
            "id",
            "account",
            "trigger",
            "state",
            "requested_at",
            "started_at",
            "finished_at",
            "attempts",
            "created",
            "updated",
            "deleted",
            "progress",
            "error",
            "skipped",
        ]
        read_only_fields = fields


class SyncRequestSerializer(serializers.Serializer):
    account = serializers.PrimaryKeyRelatedField(
        queryset=Account.objects.none(), required=False, allow_null=True
    )

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["account"].queryset = calendar_selectors.accounts_for_user(user=user)


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("account", OpenApiTypes.INT),
            OpenApiParameter("state", OpenApiTypes.STR, enum=SyncRun.State.values),
        ]
    ),
    create=extend_schema(
        request=SyncRequestSerializer,
        responses={
            202: inline_serializer("SyncRequested", fields={"runs": SyncRunSerializer(many=True)})
        },
    ),
)
class SyncViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = SyncRunSerializer
    queryset = SyncRun.objects.none()
    throttle_scope = "sync_request"

    def get_queryset(self):
        state = self.request.query_params.get("state") or None
        if state is not None and state not in SyncRun.State.values:
            raise ValidationError(
                {"state": [f"Must be one of: {', '.join(SyncRun.State.values)}."]}
            )
        return selectors.runs_for_user(
            user=self.request.user, account_id=int_param(self.request, "account"), state=state
        )

    def create(self, request, *args, **kwargs):
        incoming = SyncRequestSerializer(data=request.data, user=request.user)
        incoming.is_valid(raise_exception=True)
        account = incoming.validated_data.get("account")
        try:
            runs = services.sync_request(
                user=request.user, account=account, trigger=SyncRun.Trigger.API
            )
        except services.AccountNotSyncable as exc:
            raise ValidationError({"account": [str(exc)]}) from None
        except services.BrokerUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from None
        return Response(
            {"runs": SyncRunSerializer(runs, many=True).data}, status=status.HTTP_202_ACCEPTED
        )
