"""The Dagster code location: the Definitions object and the workspace that loads it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetCheckKey, AssetKey, Definitions

from assets.pipeline import CHECK_NAMES
from assets.resources import FeatureStoreResource, RegistryResource
from orchestration.definitions import build_definitions, defs

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFIXES = ("breast_cancer", "fraud")
STAGES = ("training_data", "trained_model", "onnx_artifact", "validation", "production_deployment")
FEATURE_ASSETS = ("customer_activity", "online_features")  # the fraud model's Feast assets
ASSET_KEYS = {AssetKey(f"{p}_{stage}") for p in PREFIXES for stage in STAGES} | {
    AssetKey(name) for name in FEATURE_ASSETS
}
CHECK_KEYS = {
    AssetCheckKey(AssetKey(f"{p}_validation"), f"{name}_check")
    for p in PREFIXES
    for name in CHECK_NAMES
}


def test_definitions_are_loadable() -> None:
    Definitions.validate_loadable(defs)
    Definitions.validate_loadable(build_definitions())


def test_definitions_hold_the_demo_assets_checks_jobs_schedule_and_resources() -> None:
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    assert set(graph.get_all_asset_keys()) == ASSET_KEYS
    assert len(ASSET_KEYS) == 12
    assert set(graph.asset_check_keys) == CHECK_KEYS
    assert len(CHECK_KEYS) == 8

    # Each model is its own group, wired training data -> ... -> production deployment.
    for p in PREFIXES:
        for stage in STAGES:
            assert graph.get(AssetKey(f"{p}_{stage}")).group_name == p
        parents = {
            stage: {k.to_user_string() for k in graph.get(AssetKey(f"{p}_{stage}")).parent_keys}
            for stage in STAGES
        }
        assert parents == {
            # The fraud model trains on Feast's point-in-time join of the customer activity.
            "training_data": {"customer_activity"} if p == "fraud" else set(),
            "trained_model": {f"{p}_training_data"},
            "onnx_artifact": {f"{p}_trained_model", f"{p}_training_data"},
            "validation": {f"{p}_trained_model", f"{p}_onnx_artifact"},
            "production_deployment": {f"{p}_validation"},
        }

    for name in FEATURE_ASSETS:
        assert graph.get(AssetKey(name)).group_name == "features"
    assert {k.to_user_string() for k in graph.get(AssetKey("online_features")).parent_keys} == {
        "customer_activity"
    }

    job = repo.get_job("demo_pipeline")
    assert set(job.asset_layer.selected_asset_keys) == ASSET_KEYS
    check_nodes = {f"{k.asset_key.to_user_string()}_{k.name}" for k in CHECK_KEYS}
    assert check_nodes <= {node.name for node in job.nodes}

    # The online store is materialized on a schedule; its job selects just that asset.
    (schedule,) = repo.schedule_defs
    assert schedule.cron_schedule == "*/10 * * * *"
    materialize = repo.get_job("materialize_online_features")
    assert set(materialize.asset_layer.selected_asset_keys) == {AssetKey("online_features")}
    assert schedule.job_name == "materialize_online_features"

    assert set(repo.get_top_level_resources()) == {"registry", "features"}
    assert defs.resources is not None
    resource = defs.resources["registry"]
    assert isinstance(resource, RegistryResource)
    # Unconfigured: the registry comes from the ROOST_* environment at run time.
    assert resource.home is None and resource.database_url is None
    features = defs.resources["features"]
    assert isinstance(features, FeatureStoreResource)
    assert features.home is None and features.redis_url is None


def _dagster_cli() -> str | None:
    sibling = Path(sys.executable).parent / "dagster"
    if sibling.exists():
        return str(sibling)
    return shutil.which("dagster")


def test_workspace_yaml_loads_the_code_location(tmp_path: Path) -> None:
    dagster = _dagster_cli()
    if dagster is None:
        pytest.skip("the dagster CLI is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "ROOST_"))}
    env |= {"DAGSTER_HOME": str(tmp_path / "dagster"), "ROOST_HOME": str(tmp_path / "roost")}
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    done = subprocess.run(
        [dagster, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300,
    )
    output = done.stdout + done.stderr
    if done.returncode == 2 and "No such command" in output:
        pytest.skip("this dagster has no `dagster definitions validate`")
    assert done.returncode == 0, output
    assert "Validation successful for code location orchestration.definitions:defs" in output
    assert "All code locations passed validation" in output
    # Loading the definitions touches no registry state.
    assert not (tmp_path / "roost").exists()
