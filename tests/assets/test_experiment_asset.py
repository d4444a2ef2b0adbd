"""The experiment analysis asset over real Parquet logs of a running A/B experiment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from canary_testing import Arm, write_log
from dagster import DagsterInstance, MaterializeResult, build_asset_context, materialize
from roost_testing import deploy_model, make_linear_onnx

from assets.experiments import (
    ASSET,
    SCHEDULE,
    experiment_analysis,
    experiment_definitions,
    variant_rows,
)
from assets.resources import RegistryResource
from registry import Registry, RoostSettings, State
from registry.traffic import Variant
from registry.traffic_ops import start_experiment
from warehouse import run_query

MODEL = "ranker"


@pytest.fixture
def experiment(registry: Registry, settings: RoostSettings) -> None:
    """``ranker`` v1 in production; experiment ``new-ranker``: control v1 / treatment v2, 50/50,
    1200 vs 800 requests from 600 vs 400 users (a sample-ratio mismatch), 90 % vs 80 % correct."""
    deploy_model(registry, MODEL, make_linear_onnx(seed=1))
    info = registry.register_version(MODEL, make_linear_onnx(seed=2))
    registry.transition(MODEL, info.version, State.VALIDATING, reason="t")
    registry.transition(MODEL, info.version, State.VALIDATED, reason="t")
    start_experiment(registry, MODEL, "new-ranker",
                     [Variant(1, 50.0, "control"), Variant(2, 50.0, "treatment")], salt="s")
    write_log(
        settings.logs_dir, datetime.now(UTC) - timedelta(hours=1),
        Arm("control", 1, "experiment", 1200, experiment="new-ranker",
            user=lambda i: f"a{i // 2}"),
        Arm("treatment", 2, "experiment", 800, experiment="new-ranker",
            user=lambda i: f"b{i // 2}", correct=lambda i: i % 10 < 8),
        Arm("production", 1, "production", 300),  # outside the experiment
        model=MODEL,
    )


def test_asset_metadata_and_the_results_view_match_hand_counts(
    experiment: None, settings: RoostSettings
) -> None:
    result = materialize(
        [experiment_analysis], instance=DagsterInstance.ephemeral(),
        resources={"registry": RegistryResource(home=str(settings.home))},
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["experiments"].value == 1 and metadata["srm_detected"].value == 1
    table: Any = metadata["variants"].value
    rows = [record.data for record in table.records]
    assert [(r["variant"], r["version"], r["units"], r["requests"], r["labelled"])
            for r in rows] == [("control", 1, 600, 1200, 1200), ("treatment", 2, 400, 800, 800)]
    assert [r["accuracy"] for r in rows] == [pytest.approx(0.9), pytest.approx(0.8)]
    assert all(r["srm_detected"] for r in rows) and rows[0]["is_control"]
    assert rows[1]["accuracy_p_value"] < 1e-6
    markdown = str(metadata[f"{MODEL}/new-ranker"].value)
    assert "Sample-ratio mismatch" in markdown and "treatment" in markdown
    columns, view = run_query(
        settings.logs_dir,
        "select variant, units, requests, accuracy, srm_detected from experiment_results "
        "order by is_control desc",
    )
    assert view == [("control", 600, 1200, 0.9, True), ("treatment", 400, 800, 0.8, True)]


def test_no_experiment_gives_an_empty_analysis(
    registry: Registry, settings: RoostSettings
) -> None:
    deploy_model(registry, MODEL, make_linear_onnx(seed=1))
    out = experiment_analysis(build_asset_context(),
                              registry=RegistryResource(home=str(settings.home)))
    assert isinstance(out, MaterializeResult) and out.metadata is not None
    assert out.metadata["experiments"] == 0
    assert variant_rows([]) == []
    assert run_query(settings.logs_dir, "select count(*) from experiment_results")[1] == [(0,)]


def test_schedule_cron_comes_from_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOST_EXPERIMENT_SCHEDULE", "*/15 * * * *")
    assets, (schedule,) = experiment_definitions()
    assert [a.key.path for a in assets] == [[ASSET]]
    assert schedule.name == SCHEDULE and schedule.cron_schedule == "*/15 * * * *"
