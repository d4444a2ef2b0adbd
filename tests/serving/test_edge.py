"""The HTTP edge and the error hierarchy: who made a change (the principal in the audit), the
route table's roles and model scope, request bodies in the OpenAPI document, one rendering of
errors for HTTP and gRPC."""

from __future__ import annotations

import logging

import httpx
import pytest
from roost_testing import deploy_model, make_linear_onnx, running_gateway

from registry import InvalidRequest, NotFound, Registry, RoostSettings, ServiceUnavailable
from registry.errors import (
    Draining,
    Forbidden,
    PayloadTooLarge,
    RateLimited,
    RoostError,
    Unauthorized,
    UnsupportedMediaType,
)
from registry.keys import DEV_KEY, create_key
from serving.auth import ANONYMOUS, Principal
from serving.batching import InstancesStuck, QueueFull
from serving.breaker import BreakerOpen
from serving.edge import ROUTES, render_error


def test_every_error_knows_its_http_status_grpc_code_and_retry_after() -> None:
    cases: list[tuple[RoostError, int, str, dict[str, str]]] = [
        (InvalidRequest("x"), 400, "INVALID_ARGUMENT", {}),
        (PayloadTooLarge("x"), 413, "RESOURCE_EXHAUSTED", {}),
        (UnsupportedMediaType("x"), 415, "INVALID_ARGUMENT", {}),
        (Unauthorized("x"), 401, "UNAUTHENTICATED", {"WWW-Authenticate": 'Bearer realm="roost"'}),
        (Forbidden("x"), 403, "PERMISSION_DENIED", {}),
        (NotFound("x"), 404, "NOT_FOUND", {}),
        (RateLimited("x", retry_after_s=1), 429, "RESOURCE_EXHAUSTED", {"Retry-After": "1"}),
        (ServiceUnavailable("x"), 503, "UNAVAILABLE", {}),
        (Draining("x"), 503, "UNAVAILABLE", {"Retry-After": "1"}),
        (QueueFull("x", retry_after_s=1), 503, "UNAVAILABLE", {"Retry-After": "1"}),
        (InstancesStuck("x", retry_after_s=2), 503, "UNAVAILABLE", {"Retry-After": "2"}),
        (BreakerOpen("x", retry_after_s=4.2), 503, "UNAVAILABLE", {"Retry-After": "5"}),
        (RoostError("x"), 500, "INTERNAL", {}),
    ]
    for error, status, code, headers in cases:
        assert error.to_http() == (status, headers), error
        assert error.to_grpc() == code, error
        assert render_error(error) == (status, headers, b'{"error":"x"}')
    # a breaker is not a full queue: both are 503s that carry Retry-After
    assert not isinstance(BreakerOpen("x"), QueueFull)
    assert isinstance(BreakerOpen("x"), ServiceUnavailable)
    assert BreakerOpen("x").retry_after_s == 1.0


def test_unexpected_errors_are_500_without_details(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="roost.serving"):
        status, headers, body = render_error(KeyError("secret internals"))
    assert (status, headers, body) == (500, {}, b'{"error":"internal server error"}')
    assert "secret internals" in caplog.text  # logged, not sent


def test_route_table_names_a_role_for_every_state_changing_path() -> None:
    by_pattern = {route.pattern: route for route in ROUTES}
    assert any("admin" in p and by_pattern[p].role == "admin" for p in by_pattern)
    assert [r.role for r in ROUTES if r.handler is not None] == ["predict"]  # the hot route
    public = [r.pattern for r in ROUTES if r.role is None]
    assert all("health" in p or "docs" in p or "openapi" in p for p in public)


def test_principal_names_the_actor() -> None:
    assert ANONYMOUS.actor == "anonymous"
    assert Principal("k1", "alice", frozenset({"admin"}), None).actor == "key:alice"
    assert Principal("dev", "dev mode", frozenset({"admin"}), None).actor == "dev"


def test_admin_and_repository_changes_name_the_key_in_the_audit(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    deploy_model(registry, "other", make_linear_onnx(seed=2))
    alice, _ = create_key(registry, "alice", ["admin"])
    bob, _ = create_key(registry, "bob", ["admin"], models=["m"])
    dev = settings.model_copy(update={"dev_mode": True, "poll_interval_s": 0.2})
    with running_gateway(dev) as url, httpx.Client(base_url=url, timeout=10) as client:
        changed = client.put(
            "/admin/models/m/traffic", json={"flags": ["new-ui"]}, headers={"x-api-key": alice}
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["flags"] == ["new-ui"]
        record = registry.audit_records("m")[-1]
        assert record.actor == "key:alice", record

        unloaded = client.post("/v2/repository/models/m/unload", headers={"x-api-key": bob})
        assert unloaded.status_code == 200, unloaded.text
        assert (registry.audit_records("m")[-1].action, registry.audit_records("m")[-1].actor) == (
            "unload", "key:bob"
        )
        loaded = client.post("/v2/repository/models/m/load", headers={"x-api-key": DEV_KEY})
        assert loaded.status_code == 200, loaded.text
        assert registry.audit_records("m")[-1].actor == "dev"

        # a model-scoped admin key changes only its models
        scoped = client.put("/admin/models/other/traffic", json={}, headers={"x-api-key": bob})
        assert scoped.status_code == 403 and "for model 'other'" in scoped.json()["error"]

        # bad bodies name the field
        bad = client.post(
            "/admin/models/m/canary", json={"version": "two", "percent": 5},
            headers={"x-api-key": alice},
        )
        assert bad.status_code == 400 and bad.json()["error"].startswith("version: "), bad.text
        missing = client.post(
            "/admin/models/m/experiments", json={"id": "e"}, headers={"x-api-key": alice}
        )
        assert missing.status_code == 400 and missing.json()["error"].startswith("variants: ")
        broken = client.post(
            "/admin/models/m/shadows",
            content=b"{nope",
            headers={"x-api-key": alice, "content-type": "application/json"},
        )
        assert broken.status_code == 400
        assert broken.json()["error"].startswith("request body is not valid JSON")


def test_openapi_describes_admin_and_feedback_bodies(settings: RoostSettings) -> None:
    with running_gateway(settings) as url:
        document = httpx.get(f"{url}/openapi.json", timeout=10).json()
    schemas = document["components"]["schemas"]
    for name in ("PolicyBody", "CanaryBody", "ShadowBody", "ExperimentBody", "RollbackBody",
                 "FeedbackBody", "FeedbackItem"):
        assert name in schemas, sorted(schemas)
    assert set(schemas["CanaryBody"]["required"]) == {"version", "percent"}
    assert "request_id" in schemas["FeedbackItem"]["properties"]

    def body_ref(path: str, method: str) -> str:
        content = document["paths"][path][method]["requestBody"]["content"]
        ref: str = content["application/json"]["schema"].get("$ref", "")
        if not ref:  # an optional body: anyOf [model, null]
            schema = content["application/json"]["schema"]
            ref = next(s["$ref"] for s in schema["anyOf"] if "$ref" in s)
        return ref.rsplit("/", 1)[-1]

    assert body_ref("/admin/models/{model}/canary", "post") == "CanaryBody"
    assert body_ref("/admin/models/{model}/traffic", "put") == "PolicyBody"
    assert body_ref("/admin/models/{model}/shadows", "post") == "ShadowBody"
    assert body_ref("/admin/models/{model}/experiments", "post") == "ExperimentBody"
    assert body_ref("/admin/models/{model}/canary/rollback", "post") == "RollbackBody"
    assert body_ref("/v1/feedback", "post") == "FeedbackBody"
