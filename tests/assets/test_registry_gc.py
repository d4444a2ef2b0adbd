"""Registry garbage collection: archive long-deprecated versions, delete unshared artifacts,
never touch a version that serves or could be rolled back to."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from dagster import materialize
from roost_testing import deploy_model, make_linear_onnx

from assets.registry_gc import collect_garbage, protected_versions, registry_gc
from assets.resources import RegistryResource
from orchestration import cli
from orchestration.cli import main
from registry import Registry, RoostSettings, State
from registry.tables import DeploymentRow

LATER = datetime.now(UTC) + timedelta(days=60)


def twelve_versions(registry: Registry, model: str = "m") -> list[str]:
    """Deploy versions 1..12 in turn: 12 in production, 1..11 DEPRECATED; their hashes."""
    return [
        registry.get_version(model, deploy_model(registry, model, make_linear_onnx(seed=s))).sha256
        for s in range(12)
    ]


def states(registry: Registry, model: str = "m") -> dict[int, State]:
    return {v.version: v.state for v in registry.list_versions(model)}


def test_archives_past_retention_keeps_production_and_rollback_target(
    registry: Registry,
) -> None:
    hashes = twelve_versions(registry)
    report = collect_garbage(registry, retention_days=30, now=LATER)
    assert report.archived == [("m", v) for v in range(1, 11)]
    assert report.kept == {("m", 11): "rollback target"}
    assert sorted(report.deleted) == sorted(hashes[:10])
    after = states(registry)
    assert all(after[v] is State.ARCHIVED for v in range(1, 11))
    assert after[11] is State.DEPRECATED and after[12] is State.PRODUCTION
    assert [registry.artifacts.exists(h) for h in hashes] == [False] * 10 + [True, True]
    assert registry.load_artifact("m", 12) and registry.load_artifact("m", 11)

    records = registry.audit_records("m")
    deletions = [r for r in records if r.action == "gc_delete_artifact"]
    assert sorted(r.details["sha256"] for r in deletions) == sorted(hashes[:10])
    assert {r.actor for r in deletions} == {"roost-gc"}
    archived = [r for r in records if r.action == "transition" and r.details["to"] == "ARCHIVED"]
    assert len(archived) == 10 and "retention" in archived[0].details["reason"]
    assert registry.audit_verify().ok

    # The rollback still works, and a second run finds nothing more to do.
    registry.rollback("m", reason="bad release")
    assert states(registry)[11] is State.PRODUCTION
    again = collect_garbage(registry, retention_days=30, now=LATER)
    assert again.archived == [] and again.deleted == []
    assert again.kept == {("m", 12): "rollback target"}


def test_within_retention_nothing_is_touched(registry: Registry) -> None:
    hashes = twelve_versions(registry)
    report = collect_garbage(registry, retention_days=30)
    assert report.archived == [] and report.deleted == []
    assert len(report.kept) == 11
    assert all(registry.artifacts.exists(h) for h in hashes)


def test_dry_run_changes_nothing_and_reports_the_same(registry: Registry) -> None:
    hashes = twelve_versions(registry)
    dry = collect_garbage(registry, retention_days=30, now=LATER, dry_run=True)
    assert all(states(registry)[v] is State.DEPRECATED for v in range(1, 12))
    assert all(registry.artifacts.exists(h) for h in hashes)
    real = collect_garbage(registry, retention_days=30, now=LATER)
    assert (dry.archived, dry.deleted, dry.kept) == (real.archived, real.deleted, real.kept)


def test_shared_hash_keeps_the_file(registry: Registry) -> None:
    data = make_linear_onnx(seed=0)
    deploy_model(registry, "m", data)
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    deploy_model(registry, "m", make_linear_onnx(seed=2))  # v1 deprecated, v2 rollback target
    other = registry.register_version("other", data)  # same bytes, another model, REGISTERED
    report = collect_garbage(registry, retention_days=0, now=LATER)
    assert report.archived == [("m", 1)]
    assert report.deleted == []
    assert registry.artifacts.exists(other.sha256)
    assert registry.load_artifact("other", other.version) == data


def test_routed_versions_are_never_collected(registry: Registry, settings: RoostSettings) -> None:
    twelve_versions(registry)
    # A policy routing DEPRECATED versions cannot be made through the API (they are not
    # routable); write one straight into the table to check the guard anyway.
    policy = (
        registry.get_policy("m").with_shadow(3, 50.0).with_canary(4, 5.0)
    )
    with registry._write() as session:
        row = session.get(DeploymentRow, "m")
        assert row is not None
        row.policy = policy.to_dict()
    with registry._read() as session:
        protected = protected_versions(session)
    assert protected[("m", 3)] == "routed by the traffic policy"
    assert protected[("m", 4)] == "routed by the traffic policy"
    assert protected[("m", 12)] == "production"
    report = collect_garbage(registry, retention_days=0, now=LATER)
    assert ("m", 3) not in report.archived and ("m", 4) not in report.archived
    assert report.kept[("m", 3)] == report.kept[("m", 4)] == "routed by the traffic policy"
    assert report.kept[("m", 11)] == "rollback target"
    assert len(report.archived) == 8


def test_roost_gc_cli_dry_run_and_run(registry: Registry, settings: RoostSettings) -> None:
    twelve_versions(registry)
    env = {"ROOST_HOME": str(settings.home)}
    cli._home.cache_clear()  # the CLI caches the home it found, per process
    runner = CliRunner()
    dry = runner.invoke(main, ["gc", "--dry-run", "--retention-days", "0", "--json"], env=env)
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] and len(plan["archived"]) == 10 and len(plan["deleted"]) == 10
    assert states(registry)[1] is State.DEPRECATED
    done = runner.invoke(main, ["gc", "--retention-days", "0"], env=env)
    assert done.exit_code == 0, done.output
    assert "10 version(s) archived, 10 artifact(s) deleted" in done.stdout
    assert states(registry)[1] is State.ARCHIVED


def test_the_dagster_asset_runs_with_the_retention_setting(
    registry: Registry, settings: RoostSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    twelve_versions(registry)
    monkeypatch.setenv("ROOST_DEPRECATED_RETENTION_DAYS", "0")
    result = materialize(
        [registry_gc], resources={"registry": RegistryResource(home=str(settings.home))},
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["archived"].value == 10 and metadata["artifacts_deleted"].value == 10
    assert states(registry)[10] is State.ARCHIVED and states(registry)[11] is State.DEPRECATED
