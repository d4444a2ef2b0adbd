"""The code location's monitoring assets: per model, daily partitioned, each kind on a schedule."""

from __future__ import annotations

from pathlib import Path

from dagster import AssetKey, DailyPartitionsDefinition

from orchestration.definitions import build_definitions

CHURN_YAML = """name: churn-v2
source: {kind: onnx}
held_out: {path: /data/churn.csv, label: churned}
"""


def test_every_spec_gets_daily_drift_and_concept_assets_on_schedules(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "churn-v2.yaml").write_text(CHURN_YAML)
    repo = build_definitions(tmp_path).get_repository_def()
    graph = repo.asset_graph
    expected = {
        AssetKey(f"{p}_{kind}")
        for p in ("breast_cancer", "fraud", "churn_v2")
        for kind in ("data_drift", "concept_drift")
    }
    assert expected <= set(graph.get_all_asset_keys())
    for key in expected:
        node = graph.get(key)
        assert node.group_name == "monitoring"
        assert isinstance(node.partitions_def, DailyPartitionsDefinition)
        assert node.partitions_def.timezone == "UTC"

    schedules = {s.name: s for s in repo.schedule_defs}
    for name, job, cron in (("data_drift_schedule", "data_drift_job", "30 0 * * *"),
                            ("concept_drift_schedule", "concept_drift_job", "0 2 * * *")):
        assert schedules[name].cron_schedule == cron
        assert schedules[name].job_name == job
        kind = job.removesuffix("_job")
        assert set(repo.get_job(job).asset_layer.selected_asset_keys) == {
            k for k in expected if k.to_user_string().endswith(kind)
        }
    # the models' pipelines stay unpartitioned: the demo job selects no monitoring asset
    demo = repo.get_job("demo_pipeline").asset_layer.selected_asset_keys
    assert not expected & set(demo)
