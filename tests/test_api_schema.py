"""The OpenAPI 3 schema drf-spectacular generates is valid, warning-free and served with its docs."""

from __future__ import annotations

import pytest
import yaml
from django.core.management import call_command
from rest_framework.test import APIClient


def test_schema_generates_without_warnings_and_validates(tmp_path):
    out = tmp_path / "schema.yml"
    # --validate checks the result against the OpenAPI 3 meta-schema; --fail-on-warn turns every
    # generator warning (an untyped parameter, an unknown serializer field) into a failure.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    schema = yaml.safe_load(out.read_text())
    assert schema["openapi"].startswith("3.")
    for path in ("/api/accounts/", "/api/calendars/", "/api/events/", "/api/sync/"):
        assert path in schema["paths"], path
    run_id = schema["paths"]["/api/sync/{id}/"]["get"]["parameters"][0]
    assert run_id["schema"]["type"] == "integer"
    event = schema["components"]["schemas"]["Event"]["properties"]
    assert event["occurrence_id"]["description"]
    assert event["start_date"]["format"] == "date" and event["start_date"]["nullable"]
    connect = schema["components"]["schemas"]["AccountCreateRequest"]["properties"]
    assert {"password", "refresh_token"} <= set(connect)


@pytest.mark.django_db
def test_schema_and_docs_are_served():
    client = APIClient()
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    assert "/api/sync/" in schema.json()["paths"]
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger" in docs.content.lower()
