"""The registry on a real SQLite database and artifact store in a temporary ROOST_HOME."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest
from roost_testing import make_linear_onnx

from registry import (
    ArtifactIntegrityError,
    Conflict,
    InvalidRequest,
    InvalidTransition,
    NotFound,
    Registry,
    RoostSettings,
    State,
)


def validated(registry: Registry, model: str, seed: int) -> int:
    info = registry.register_version(model, make_linear_onnx(seed=seed), feature_names=list("abcd"))
    registry.transition(model, info.version, State.VALIDATING, reason="test")
    registry.transition(model, info.version, State.VALIDATED, reason="test")
    return info.version


def test_register_reads_signature_and_is_idempotent(registry: Registry) -> None:
    data = make_linear_onnx(seed=1)
    first = registry.register_version(
        "m", data, feature_names=["a", "b", "c", "d"], metrics={"auc": 0.9},
        lineage={"data": "abc"}, tags={"team": "x"}, registered_by="alice",
    )
    assert first.version == 1 and first.state is State.REGISTERED
    assert [t.name for t in first.signature.inputs] == ["input"]
    assert first.signature.inputs[0].datatype == "FP32"
    assert first.signature.inputs[0].shape == (-1, 4)
    assert {t.name for t in first.signature.outputs} == {"label", "probabilities"}
    assert first.signature.feature_names == ("a", "b", "c", "d")
    assert first.registered_by == "alice" and first.metrics == {"auc": 0.9}
    again = registry.register_version("m", data)
    assert again.version == 1
    second = registry.register_version("m", make_linear_onnx(seed=2))
    assert second.version == 2
    assert [v.version for v in registry.list_versions("m")] == [1, 2]


def test_register_refuses_bad_input(registry: Registry) -> None:
    with pytest.raises(InvalidRequest, match="not a loadable ONNX model"):
        registry.register_version("m", b"not onnx")
    with pytest.raises(InvalidRequest, match="model name"):
        registry.register_version("../etc", make_linear_onnx())
    with pytest.raises(InvalidRequest, match="feature_names has 3 names"):
        registry.register_version("m", make_linear_onnx(), feature_names=["a", "b", "c"])


def test_transition_audited_and_illegal_refused(registry: Registry) -> None:
    v = registry.register_version("m", make_linear_onnx()).version
    with pytest.raises(InvalidTransition, match="allowed from REGISTERED: VALIDATING"):
        registry.transition("m", v, State.PRODUCTION, reason="skip")
    registry.transition("m", v, State.VALIDATING, reason="checks", actor="ci")
    assert registry.get_version("m", v).state is State.VALIDATING
    last = registry.audit_records("m")[-1]
    assert last.action == "transition" and last.actor == "ci"
    assert last.details == {"from": "REGISTERED", "to": "VALIDATING", "reason": "checks"}
    with pytest.raises(InvalidRequest, match="reason"):
        registry.transition("m", v, State.VALIDATED, reason=" ")
    with pytest.raises(NotFound, match="no version 9"):
        registry.transition("m", 9, State.VALIDATED, reason="x")
    with pytest.raises(NotFound, match="unknown model 'zz'"):
        registry.get_version("zz", 1)


def test_deploy_walks_state_machine_and_deprecates_previous(registry: Registry) -> None:
    v1 = validated(registry, "m", 1)
    gen0 = registry.generation()
    dep = registry.deploy("m", v1, reason="first")
    assert dep.production_version == v1 and registry.generation() > gen0
    steps = [
        r.details["to"] for r in registry.audit_records("m") if r.action == "transition"
    ]
    assert steps[-4:] == ["STAGING", "STAGING_TESTED", "CANARY", "PRODUCTION"]
    # deploying the production version again is a no-op
    gen1 = registry.generation()
    assert registry.deploy("m", v1).production_version == v1
    assert registry.generation() == gen1
    v2 = validated(registry, "m", 2)
    registry.deploy("m", v2)
    assert registry.get_version("m", v1).state is State.DEPRECATED
    assert registry.get_version("m", v2).state is State.PRODUCTION
    assert [v.version for v in registry.served_versions()] == [v2]
    # a version that is not VALIDATED cannot be deployed
    v3 = registry.register_version("m", make_linear_onnx(seed=3)).version
    with pytest.raises(Conflict, match="only a VALIDATED version"):
        registry.deploy("m", v3)
    # deprecating the production version by hand clears the deployment
    registry.transition("m", v2, State.DEPRECATED, reason="retire", force=True)
    assert registry.get_deployment("m") is not None
    assert registry.get_deployment("m").production_version is None  # type: ignore[union-attr]
    assert registry.served_versions() == []


def test_artifact_tampering_detected(registry: Registry, settings: RoostSettings) -> None:
    info = registry.register_version("m", make_linear_onnx())
    assert registry.load_artifact("m", info.version) == make_linear_onnx()
    path = registry.artifacts.path_for(info.sha256)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="corrupt"):
        registry.load_artifact("m", info.version)
    path.unlink()
    with pytest.raises(NotFound, match="missing"):
        registry.load_artifact("m", info.version)


def test_audit_chain_detects_tampering(registry: Registry, settings: RoostSettings) -> None:
    v = validated(registry, "m", 1)
    registry.deploy("m", v)
    result = registry.audit_verify()
    assert result.ok and result.checked >= 8
    records = registry.audit_records()
    target = records[3]
    db = sqlite3.connect(settings.home / "registry.db")
    db.execute(
        "update audit_log set details = ? where id = ?",
        ('{"from": "REGISTERED", "to": "PRODUCTION", "reason": "forged"}', target.id),
    )
    db.commit()
    bad = registry.audit_verify()
    assert not bad.ok and bad.first_bad_id == target.id and "modified" in bad.reason
    # restore, then delete a record: the chain link breaks at the next one
    db.execute(
        "update audit_log set details = ? where id = ?",
        (__import__("json").dumps(target.details), target.id),
    )
    db.commit()
    assert registry.audit_verify().ok
    db.execute("delete from audit_log where id = ?", (records[5].id,))
    db.commit()
    db.close()
    gap = registry.audit_verify()
    assert not gap.ok and gap.first_bad_id == records[6].id and "link" in gap.reason


def test_concurrent_registrations_number_versions_uniquely(settings: RoostSettings) -> None:
    errors: list[BaseException] = []
    results: list[int] = []

    def work(seed: int) -> None:
        reg = Registry.from_settings(settings)
        try:
            results.append(reg.register_version("m", make_linear_onnx(seed=seed)).version)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            reg.close()

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == list(range(1, 9))
    reg = Registry.from_settings(settings)
    assert reg.audit_verify().ok
    reg.close()


def test_audit_verify_reports_mangled_json(registry: Registry, settings: RoostSettings) -> None:
    registry.register_version("m", make_linear_onnx())
    first = registry.audit_records()[0]
    db = sqlite3.connect(settings.home / "registry.db")
    db.execute("update audit_log set details = 'not json' where id = ?", (first.id,))
    db.commit()
    db.close()
    result = registry.audit_verify()
    assert not result.ok and result.first_bad_id == first.id


def test_unload_and_load_a_deployment(registry: Registry) -> None:
    v = validated(registry, "m", 1)
    registry.deploy("m", v)
    generation = registry.generation()
    registry.set_serving_enabled("m", False, reason="maintenance", actor="ops")
    assert registry.served_versions() == []
    assert registry.generation() > generation
    assert registry.audit_records("m")[-1].action == "unload"
    registry.set_serving_enabled("m", True)
    assert [v.model for v in registry.served_versions()] == ["m"]
    with pytest.raises(NotFound):
        registry.set_serving_enabled("nope", True)
    registry.register_version("other", make_linear_onnx(seed=5))
    with pytest.raises(Conflict, match="no deployment"):
        registry.set_serving_enabled("other", False)


def test_register_says_whether_it_created_a_version(registry: Registry) -> None:
    data = make_linear_onnx(seed=21)
    first = registry.register("m", data)
    assert first.created and first.version.version == 1
    registry.transition("m", 1, State.VALIDATING, reason="test")
    registry.transition("m", 1, State.FAILED, reason="test")
    again = registry.register("m", data, metrics={"auc": 0.5})
    assert not again.created
    assert (again.version.version, again.version.state) == (1, State.FAILED)
    assert again.version.metrics == {}  # nothing of the second call was recorded
    # register_version keeps its contract: the existing version, no new one
    assert registry.register_version("m", data).version == 1
    assert [v.version for v in registry.list_versions("m")] == [1]
    assert registry.register("m", make_linear_onnx(seed=22)).created


def test_find_home_like_git(tmp_path: Path) -> None:
    from registry.settings import find_home

    root = tmp_path.resolve()
    deeper = root / "project" / "a" / "b"
    deeper.mkdir(parents=True)
    assert find_home(deeper, {}).path == deeper / ".roost"
    assert find_home(deeper, {}).source == "default"
    (root / "project" / ".roost").mkdir()
    assert find_home(deeper, {}).source == "default"  # a .roost/ without a registry is not one
    (root / "project" / ".roost" / "registry.db").touch()
    found = find_home(deeper, {})
    assert (found.path, found.source) == (root / "project" / ".roost", "found")
    assert "found" in found.describe()
    explicit = find_home(deeper, {"ROOST_HOME": "rel/home"})
    assert (explicit.path, explicit.source) == (deeper / "rel" / "home", "ROOST_HOME")
