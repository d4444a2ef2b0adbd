"""The feature assets on a real Dagster instance: activity -> training data and online store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, DefaultScheduleStatus, materialize
from feature_testing import REQUEST

from assets.demo import DEMO_MODELS, FRAUD_FEATURE_SERVICE
from assets.demo_data import FRAUD_FEATURES, Dataset, generate_fraud_transactions
from assets.features import (
    fraud_feature_assets,
    fraud_training_data_asset,
    history_end,
    online_features_schedule,
)
from assets.pipeline import DemoModelSpec
from assets.resources import FeatureStoreResource
from features import definitions
from features.online import OnlineFeatures
from features.store import FeatureSettings

SMALL_FRAUD = DemoModelSpec(
    served_name="fraud",
    prefix="fraud",
    load_data=partial(generate_fraud_transactions, n_rows=3000, n_customers=300, seed=3),
    accuracy_threshold=0.9,
    min_auc=0.75,
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
