"""The Dagster code location: the Definitions object and the workspace that loads it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetCheckKey, AssetKey, Definitions, build_sensor_context

from assets.llm_checks import LLM_CHECKS
from assets.resources import FeatureStoreResource, RegistryResource
from assets.validation_assets import ONNX_CHECKS, TRAINER_CHECKS
from orchestration.definitions import build_definitions, defs

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFIXES = ("breast_cancer", "fraud")
TRAINER = ("training_data", "trained_model", "onnx_artifact")
ROLLOUT = ("validation", "staging_deployment", "staging_tests", "canary_deployment",
           "production_deployment", "serving")
STAGES = TRAINER + ROLLOUT
FEATURE_ASSETS = ("customer_activity", "online_features")  # the fraud model's Feast assets
ASSET_KEYS = {AssetKey(f"{p}_{stage}") for p in PREFIXES for stage in STAGES} | {
    AssetKey(name) for name in FEATURE_ASSETS
}
# The project's own language model (assets/llm_demo.py), its own job.
LM_STAGES = ("trained_model", "onnx_artifact", "validation", "deployment")
LM_KEYS = {AssetKey(f"roost_lm_{stage}") for stage in LM_STAGES}
# Daily-partitioned monitoring assets (tests/monitoring/test_monitoring_definitions.py).
MONITORING_KEYS = {AssetKey(f"{p}_{k}") for p in PREFIXES for k in ("data_drift", "concept_drift")}
STAGING_CHECKS = ("staging_error_rate", "staging_latency", "staging_agreement")
CHECK_KEYS = {
    AssetCheckKey(AssetKey(f"{p}_validation"), f"{name}_check")
    for p in PREFIXES
    for name in TRAINER_CHECKS
} | {
    AssetCheckKey(AssetKey(f"{p}_staging_tests"), f"{name}_check")
    for p in PREFIXES
    for name in STAGING_CHECKS
}
CHURN_YAML = """name: churn-v2
source: {kind: onnx}
held_out: {path: /data/churn.csv, label: churned}
validation: {metric: auc, minimum: 0.8}
canary: {schedule: [5, 50, 100]}
"""


def test_definitions_are_loadable() -> None:
    Definitions.validate_loadable(defs)
    Definitions.validate_loadable(build_definitions())


def test_definitions_hold_the_demo_assets_checks_jobs_schedule_and_resources(
    tmp_path: Path,
) -> None:
    repo = build_definitions(tmp_path).get_repository_def()
    graph = repo.asset_graph
    assert set(graph.get_all_asset_keys()) == ASSET_KEYS | MONITORING_KEYS | LM_KEYS | {
        AssetKey("experiment_analysis"), AssetKey("registry_gc"), AssetKey("retention")
    }
    assert set(graph.asset_check_keys) == CHECK_KEYS | {
        AssetCheckKey(AssetKey("roost_lm_validation"), f"{name}_check") for name in LLM_CHECKS
    }
    assert set(repo.get_job("roost_lm_pipeline").asset_layer.selected_asset_keys) == LM_KEYS

    # Each model is its own group, wired training data -> ... -> production -> serving.
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
            "staging_deployment": {f"{p}_validation"},
            "staging_tests": {f"{p}_staging_deployment"},
            "canary_deployment": {f"{p}_staging_tests"},
            "production_deployment": {f"{p}_canary_deployment"},
            "serving": {f"{p}_production_deployment"},
        }
        assert set(repo.get_job(f"{p}_rollout").asset_layer.selected_asset_keys) == {
            AssetKey(f"{p}_{s}") for s in ROLLOUT if s not in ("validation", "serving")
        }
        assert AssetKey(f"{p}_validation") in (
            repo.get_job(f"{p}_validate").asset_layer.selected_asset_keys
        )

    for name in FEATURE_ASSETS:
        assert graph.get(AssetKey(name)).group_name == "features"
    assert {k.to_user_string() for k in graph.get(AssetKey("online_features")).parent_keys} == {
        "customer_activity"
    }

    job = repo.get_job("demo_pipeline")
    serving = {AssetKey(f"{p}_serving") for p in PREFIXES}
    assert set(job.asset_layer.selected_asset_keys) == ASSET_KEYS - serving
    check_nodes = {f"{k.asset_key.to_user_string()}_{k.name}" for k in CHECK_KEYS}
    assert check_nodes <= {node.name for node in job.nodes}

    # The online store is materialized on a schedule; its job selects just that asset.
    (schedule,) = [s for s in repo.schedule_defs
                   if s.name not in ("experiment_analysis_schedule", "registry_gc_schedule",
                                     "retention_schedule",
                                     "data_drift_schedule", "concept_drift_schedule")]
    assert schedule.cron_schedule == "*/10 * * * *"
    materialize = repo.get_job("materialize_online_features")
    assert set(materialize.asset_layer.selected_asset_keys) == {AssetKey("online_features")}
    assert schedule.job_name == "materialize_online_features"
    # operator jobs an operator launches from the UI with typed config
    for name in ("promote", "pause_rollout", "resume_rollout", "rollback", "quantize_model"):
        assert repo.has_job(name), name
    assert sorted(s.name for s in repo.sensor_defs) == [
        "alert_sensor", "canary_sensor", "registry_observer"
    ]

    assert set(repo.get_top_level_resources()) == {"registry", "features"}
    assert defs.resources is not None
    resource = defs.resources["registry"]
    assert isinstance(resource, RegistryResource)
    # Unconfigured: the registry comes from the ROOST_* environment at run time.
    assert resource.home is None and resource.database_url is None
    features = defs.resources["features"]
    assert isinstance(features, FeatureStoreResource)
    assert features.home is None and features.redis_url is None


def test_a_yaml_onnx_spec_gets_its_own_lineage_jobs_and_observation(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "churn-v2.yaml").write_text(CHURN_YAML)
    built = build_definitions(tmp_path)
    Definitions.validate_loadable(built)
    repo = built.get_repository_def()
    graph = repo.asset_graph
    churn = ("held_out_data", "candidate", *ROLLOUT)
    assert {AssetKey(f"churn_v2_{s}") for s in churn} <= set(graph.get_all_asset_keys())
    assert {
        k.to_user_string() for k in graph.get(AssetKey("churn_v2_validation")).parent_keys
    } == {"churn_v2_candidate", "churn_v2_held_out_data"}
    assert {
        AssetCheckKey(AssetKey("churn_v2_validation"), f"{n}_check") for n in ONNX_CHECKS
    } <= set(graph.asset_check_keys)
    assert set(repo.get_job("churn_v2_validate").asset_layer.selected_asset_keys) == {
        AssetKey("churn_v2_held_out_data"), AssetKey("churn_v2_candidate"),
        AssetKey("churn_v2_validation"),
    }
    # The demos' job does not pull in the user's model.
    demo = repo.get_job("demo_pipeline").asset_layer.selected_asset_keys
    assert not any(k.to_user_string().startswith("churn") for k in demo)

    # The observer, on an empty registry, records each model as serving nothing.
    sensor = repo.get_sensor_def("registry_observer")
    with build_sensor_context(
        resources={"registry": RegistryResource(home=str(tmp_path))}
    ) as context:
        result = sensor(context)
    events = {e.asset_key.to_user_string(): e for e in result.asset_events}
    assert set(events) == {"breast_cancer_serving", "fraud_serving", "churn_v2_serving"}
    assert events["churn_v2_serving"].metadata["production_version"].value == "none"


def test_a_broken_yaml_spec_names_the_file_and_field(tmp_path: Path) -> None:
    from assets.spec import SpecError

    (tmp_path / "models").mkdir()
    bad = tmp_path / "models" / "churn-v2.yaml"
    bad.write_text(CHURN_YAML.replace("minimum: 0.8", "minimum: 1.8"))
    with pytest.raises(SpecError, match=r"churn-v2\.yaml: validation\.minimum"):
        build_definitions(tmp_path)


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
