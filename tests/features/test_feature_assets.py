"""The feature assets on a real Dagster instance: activity -> training data and online store."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DefaultScheduleStatus,
    ExecuteInProcessResult,
    materialize,
)
from dagster._core.test_utils import instance_for_test
from feast.feature_view import FeatureViewState
from feast.infra.passthrough_provider import PassthroughProvider
from feature_testing import REQUEST

import assets.features as feature_assets
from assets.demo import DEMO_MODELS, FRAUD_FEATURE_SERVICE
from assets.demo_data import FRAUD_FEATURES, Dataset, generate_fraud_transactions
from assets.features import (
    FEAST_POOL,
    fraud_feature_assets,
    fraud_training_data_asset,
    history_end,
    online_features_schedule,
)
from assets.pipeline import DemoModelSpec
from assets.resources import FeatureStoreResource
from features import definitions
from features.online import OnlineFeatures
from features.store import FeatureSettings, build_store

SMALL_FRAUD = DemoModelSpec(
    served_name="fraud",
    prefix="fraud",
    load_data=partial(generate_fraud_transactions, n_rows=3000, n_customers=300, seed=3),
    feature_service=FRAUD_FEATURE_SERVICE,
    training_data_asset=fraud_training_data_asset,
)


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as inst:
        yield inst


def test_the_fraud_spec_names_the_feature_service_the_repository_defines() -> None:
    fraud = {s.served_name: s for s in DEMO_MODELS}["fraud"]
    assert fraud.feature_service == definitions.fraud_v1.name == "fraud_v1"
    assert {s.served_name: s for s in DEMO_MODELS}["breast-cancer"].feature_service is None


def test_feature_assets_write_activity_join_training_data_and_fill_the_online_store(
    tmp_path: Path, instance: DagsterInstance
) -> None:
    home = tmp_path / "roost"
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    result = materialize(
        [*fraud_feature_assets(SMALL_FRAUD), fraud_training_data_asset(SMALL_FRAUD)],
        resources={"features": FeatureStoreResource(home=str(home))},
        instance=instance,
        run_config={"ops": {"customer_activity": {"config": {"as_of": today}}}},
    )
    assert result.success

    activity = result.asset_materializations_for_node("customer_activity")[0].metadata
    assert activity["rows"].value == 3000
    assert activity["history_end"].value == history_end(today).timestamp()
    assert (home / "features" / "customer_activity.parquet").exists()

    training = result.asset_materializations_for_node("fraud_training_data")[0].metadata
    assert training["feature_service"].value == "fraud_v1"
    assert training["rows"].value == 3000
    dataset = result.output_for_node("fraud_training_data")
    assert isinstance(dataset, Dataset) and dataset.feature_names == FRAUD_FEATURES
    # The point-in-time join gives back the generator's features, row for row.
    generated = SMALL_FRAUD.load_data()
    np.testing.assert_array_equal(np.sort(dataset.X, axis=0), np.sort(generated.X, axis=0))

    online = result.asset_materializations_for_node("online_features")[0].metadata
    assert online["online_store"].value.startswith("SQLite online store at ")
    customers = activity["customers"].value
    assert online["fresh_customers_customer_profile"].value == customers
    assert 0 < online["fresh_customers_customer_activity_30d"].value < customers
    assert online["feature_lag_minutes"].value > 0

    # A customer active in the last 30 days is served from the online store.
    frame = pd.read_parquet(home / "features" / "customer_activity.parquet")
    recent = int(frame.sort_values("event_timestamp")["customer_id"].iloc[-1])
    lookup = OnlineFeatures(FeatureSettings(home=home, redis_url=None)).lookup(
        "fraud_v1",
        FRAUD_FEATURES,
        [{"entities": {"customer_id": recent}, "features": REQUEST}],
    )
    assert "txn_count_30d" not in lookup.defaulted[0]


def test_the_online_store_is_materialized_every_10_minutes() -> None:
    schedule = online_features_schedule()
    assert schedule.cron_schedule == "*/10 * * * *"
    assert schedule.default_status is DefaultScheduleStatus.RUNNING
    assert schedule.job.name == "materialize_online_features"
    online = {a.key: a for a in fraud_feature_assets(SMALL_FRAUD)}[AssetKey("online_features")]
    assert online.group_names_by_key[AssetKey("online_features")] == "features"
    (spec,) = online.specs
    assert spec.freshness_policy is not None  # the UI shows the asset as fresh, warn or fail


# -- training reads and materialization do not collide ---------------------------------------


def all_fraud_assets() -> list[Any]:
    return [*fraud_feature_assets(SMALL_FRAUD), fraud_training_data_asset(SMALL_FRAUD)]


def run_assets(
    instance: DagsterInstance, home: Path, *names: str, today: str = ""
) -> ExecuteInProcessResult:
    return materialize(
        all_fraud_assets(),
        selection=[AssetKey(n) for n in names],
        resources={"features": FeatureStoreResource(home=str(home))},
        instance=instance,
        run_config=(
            {"ops": {"customer_activity": {"config": {"as_of": today}}}}
            if "customer_activity" in names
            else None
        ),
    )


class HeldMaterialization:
    """A real Feast materialization that stops inside its first feature view, so the view stays
    MATERIALIZING (committed to the registry) until :meth:`release`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inside = threading.Event()
        self.released = threading.Event()
        self.finished_at = 0.0
        original: Callable[..., Any] = PassthroughProvider.materialize_single_feature_view

        def held(provider: Any, *args: Any, **kwargs: Any) -> Any:
            self.inside.set()
            assert self.released.wait(60), "the test never released the materialization"
            return original(provider, *args, **kwargs)

        monkeypatch.setattr(PassthroughProvider, "materialize_single_feature_view", held)

    def release(self) -> None:
        self.released.set()


def view_state(home: Path, name: str) -> FeatureViewState:
    store = build_store(FeatureSettings(home=home, redis_url=None))
    return store.get_feature_view(name).state  # type: ignore[no-any-return]


def step_events(result: ExecuteInProcessResult, node: str, kind: DagsterEventType) -> list[Any]:
    return [e for e in result.events_for_node(node) if e.event_type == kind]


def test_a_training_read_during_a_materialization_retries_with_backoff_and_succeeds(
    tmp_path: Path, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A materialization Dagster's pool does not see (here: Feast called directly): the
    training read meets the MATERIALIZING view, retries with back-off, then succeeds."""
    home = tmp_path / "roost"
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert run_assets(instance, home, "customer_activity", "online_features", today=today).success
    held = HeldMaterialization(monkeypatch)
    store = build_store(FeatureSettings(home=home, redis_url=None))
    materializing = threading.Thread(
        target=store.materialize_incremental, kwargs={"end_date": datetime.now(UTC)}
    )
    materializing.start()
    try:
        assert held.inside.wait(60)
        assert view_state(home, "customer_profile") is FeatureViewState.MATERIALIZING
        monkeypatch.setattr(feature_assets, "READ_BACKOFF_S", 0.3)
        threading.Timer(1.5, held.release).start()
        started = time.monotonic()
        result = run_assets(instance, home, "fraud_training_data")
    finally:
        held.release()
        materializing.join(60)
    assert result.success
    assert time.monotonic() - started >= 1.5  # it waited for the materialization to end
    retries = step_events(result, "fraud_training_data", DagsterEventType.STEP_UP_FOR_RETRY)
    assert retries, "the read never met the MATERIALIZING view"
    assert result.output_for_node("fraud_training_data").frame.shape[0] == 3000
    assert view_state(home, "customer_profile") is FeatureViewState.AVAILABLE_ONLINE


def test_other_training_read_errors_are_not_retried(
    tmp_path: Path, instance: DagsterInstance
) -> None:
    home = tmp_path / "roost"  # no customer activity: the read fails, once
    result = materialize(
        all_fraud_assets(),
        selection=[AssetKey("fraud_training_data")],
        resources={"features": FeatureStoreResource(home=str(home))},
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    assert not step_events(result, "fraud_training_data", DagsterEventType.STEP_UP_FOR_RETRY)


def test_the_feast_pool_makes_a_training_read_wait_for_the_scheduled_materialization(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With dagster.yaml's pool limit, the training step waits for the materialization step's
    slot: it never meets the MATERIALIZING view, so it does not retry."""
    for asset_def in all_fraud_assets():
        assert asset_def.op.pool == FEAST_POOL  # every step that touches the Feast registry
    home = tmp_path / "roost"
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    # the pool limits `roost up` runs with
    dagster_yaml = Path(__file__).resolve().parents[2] / "dagster.yaml"
    pools = {"concurrency": yaml.safe_load(dagster_yaml.read_text())["concurrency"]}
    assert pools["concurrency"]["pools"]["default_limit"] == 1
    (tmp_path / "dagster").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "dagster"), overrides=pools) as instance:
        assert run_assets(instance, home, "customer_activity", "online_features", today=today)
        held = HeldMaterialization(monkeypatch)
        scheduled: list[ExecuteInProcessResult] = []
        run = threading.Thread(
            target=lambda: scheduled.append(run_assets(instance, home, "online_features"))
        )
        run.start()
        try:
            assert held.inside.wait(60)
            assert view_state(home, "customer_profile") is FeatureViewState.MATERIALIZING
            threading.Timer(2.0, held.release).start()
            started = time.monotonic()
            result = run_assets(instance, home, "fraud_training_data")
        finally:
            held.release()
            run.join(120)
    assert scheduled and scheduled[0].success
    assert result.success
    assert time.monotonic() - started >= 2.0
    assert not step_events(result, "fraud_training_data", DagsterEventType.STEP_UP_FOR_RETRY)
