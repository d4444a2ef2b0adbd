"""Consent (issue 14): the registry's records and audit, the admin API and CLI, minimal logging
on a real gateway after a ``logging`` withdrawal, protected attributes in the log, and the
staging replay's exclusion of users without ``training`` consent."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from pydantic import SecretStr
from roost_testing import deploy_model, make_linear_onnx, running_gateway

from assets.staging import production_samples
from registry import Registry, RoostSettings
from registry.consent import ConsentStore, training_filter, user_digest
from registry.errors import InvalidRequest
from registry.keys import DEV_KEY
from serving.governance import MINIMAL_INPUTS, request_attributes, with_attributes
from warehouse.minimise import UserIdHasher
from warehouse.sql import run_query

BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                    "data": [0.1, 0.2, 0.3, 0.4]}]}
ADMIN = {"x-api-key": DEV_KEY}


def test_store_records_audits_and_hashes(registry: Registry) -> None:
    hasher = UserIdHasher("secret")
    store = ConsentStore(registry, hasher)
    assert all(r.granted and r.updated_at is None for r in store.get("alice"))  # default
    store.set("alice", ["logging", "training"], False, actor="dpo")
    store.set("alice", ["training"], False, actor="dpo")  # unchanged: no new audit record
    shown = {r.purpose: r for r in store.get("alice")}
    assert not shown["logging"].granted and shown["logging"].actor == "dpo"
    assert shown["personalization"].granted
    stored = hasher("alice")
    assert stored is not None and store.withdrawn("logging") == {stored}
    records = [r for r in registry.audit_records() if r.action.startswith("consent_")]
    assert [(r.action, r.details["purpose"]) for r in records] == [
        ("consent_withdraw", "logging"), ("consent_withdraw", "training")]
    assert records[0].details["user_sha256"] == user_digest(stored)
    assert "alice" not in json.dumps([r.details for r in records])  # no raw id in the audit
    store.set("alice", ["logging"], True)
    assert store.withdrawn("logging") == frozenset()
    assert registry.audit_verify().ok
    with pytest.raises(InvalidRequest, match="purpose"):
        store.set("alice", ["marketing"], False)


def test_attribute_headers_become_a_json_field() -> None:
    attrs = request_attributes({"roost-attr-age_band": "40_plus", "roost-attr-Bad Name": "x",
                                "roost-user": "u", "roost-attr-region": "x" * 65})
    assert attrs == {"age_band": "40_plus"}
    assert json.loads(with_attributes('{"inputs":[]}', attrs)) == {
        "inputs": [], "attributes": {"age_band": "40_plus"}}


def _rows(settings: RoostSettings, expected: int) -> list[tuple[object, ...]]:
    deadline = time.monotonic() + 20
    while True:
        _, rows = run_query(settings.logs_dir, "select request_id, user_id, inputs, outputs, "
                                               "status, version from predictions order by ts")
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_withdrawn_logging_consent_is_logged_minimally_on_a_real_gateway(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "m", make_linear_onnx(4))
    served = settings.model_copy(update={"log_flush_interval_s": 0.2, "dev_mode": True,
                                         "user_id_key": SecretStr("k")})
    with running_gateway(served) as url:
        def infer(rid: str, user: str) -> None:
            r = httpx.post(f"{url}/v2/models/m/infer", json=BODY, timeout=30, headers={
                "roost-user": user, "x-request-id": rid, "roost-attr-age_band": "40_plus"})
            assert r.status_code == 200, r.text

        infer("before", "bob")
        infer("other-before", "carol")
        r = httpx.post(f"{url}/admin/consent/bob", json={"purposes": ["logging"],
                                                          "granted": False}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["purposes"][0]["granted"] is False
        assert httpx.post(f"{url}/admin/consent/bob", json={"purposes": ["logging"],
                                                            "granted": False}).status_code == 401
        shown = httpx.get(f"{url}/admin/consent/bob", headers=ADMIN).json()["purposes"]
        assert {p["purpose"]: p["granted"] for p in shown} == {
            "logging": False, "training": True, "personalization": True}
        infer("after", "bob")
        infer("other-after", "carol")
        rows = {r[0]: r for r in _rows(served, 4)}
    assert set(rows) == {"before", "other-before", "after", "other-after"}
    _, user, inputs, outputs, status, version = rows["after"]
    assert (user, inputs, outputs, status, version) == (None, MINIMAL_INPUTS, "", 200, 1)
    for rid in ("before", "other-after"):  # logged in full, the attribute in its own field
        _, user, inputs, outputs, _, _ = rows[rid]
        assert user is not None and user not in ("bob", "carol")  # keyed hash
        assert json.loads(str(inputs))["attributes"] == {"age_band": "40_plus"}
        assert json.loads(str(inputs))["inputs"][0]["data"] == [0.1, 0.2, 0.3, 0.4]
        assert outputs


def test_cli_consent_and_training_exclusion(settings: RoostSettings, registry: Registry,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestration.cli import main
    from warehouse import ParquetSink, PredictionLogWriter, PredictionRecord

    monkeypatch.setenv("ROOST_HOME", str(settings.home))
    runner = CliRunner()
    out = runner.invoke(main, ["consent", "withdraw", "--user", "dave", "--purpose", "training"])
    assert out.exit_code == 0, out.output
    assert "training" in out.output and "withdrawn" in out.output
    shown = runner.invoke(main, ["consent", "show", "--user", "dave", "--json"])
    assert json.loads(shown.output)["purposes"][1] == {**json.loads(shown.output)["purposes"][1],
                                                       "purpose": "training", "granted": False}
    bad = runner.invoke(main, ["consent", "withdraw", "--user", "dave", "--purpose", "training",
                               "--erase"])
    assert bad.exit_code == 2 and "every purpose" in bad.output

    from datetime import UTC, datetime, timedelta

    start = datetime.now(UTC) - timedelta(minutes=5)
    with PredictionLogWriter(ParquetSink(settings.logs_dir), flush_rows=1000) as writer:
        for i, user in enumerate(["dave", "erin", None, "dave"]):
            writer.append(PredictionRecord(
                request_id=f"r{i}", ts=start + timedelta(seconds=i), model="m", version=1,
                inputs=json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                               "shape": [1, 1], "data": [float(i)]}]}),
                outputs="[]", latency_ms=1.0, status=200, user_id=user, protocol="v2-rest",
                error=None))
    assert len(production_samples(settings, "m", 10)) == 4
    store = ConsentStore(registry, UserIdHasher.from_settings(settings, warn=False))
    kept = production_samples(settings, "m", 10, training_filter(store))
    assert sorted(s.body["inputs"][0]["data"][0] for s in kept) == [1.0, 2.0]  # erin, anonymous

    erased = runner.invoke(main, ["consent", "withdraw", "--user", "dave", "--erase", "--json"])
    assert erased.exit_code == 0, erased.output
    assert json.loads(erased.output)["erased_prediction_rows"] == 2
    assert len(production_samples(settings, "m", 10)) == 2
    assert [r.action for r in registry.audit_records()][-1] == "erase_user"


def test_consent_table_is_in_the_migrated_schema(tmp_path: Path) -> None:
    from sqlalchemy import inspect

    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "a")
    try:
        assert inspect(reg.engine).has_table("consent")
    finally:
        reg.close()



def test_consent_gate_refreshes_in_the_background_not_on_a_request(
        registry: Registry) -> None:
    """A withdrawal made elsewhere (another gateway, the CLI) reaches a started gate within its
    refresh interval through the background task; requests only read memory."""
    import asyncio

    from serving.governance import ConsentGate

    hasher = UserIdHasher("secret")

    async def scenario() -> None:
        gate = ConsentGate(ConsentStore(registry, hasher), refresh_s=0.05)
        gate.start()
        try:
            assert not gate.logging_withdrawn("bob")
            ConsentStore(registry, hasher).set("bob", ["logging"], False, actor="cli")
            assert not gate.logging_withdrawn("bob")  # not read on the request's path
            for _ in range(100):
                await asyncio.sleep(0.02)
                if gate.logging_withdrawn("bob"):
                    break
            assert gate.logging_withdrawn("bob") and not gate.logging_withdrawn("carol")
        finally:
            await gate.stop()

    asyncio.run(scenario())
