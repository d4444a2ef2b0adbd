"""Point-in-time training data from Feast: nothing from after a label's time leaks into its row."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from dagster import Failure
from feature_testing import NOW, REQUEST, make_store, snapshot

from assets.demo_data import FRAUD_FEATURES, generate_fraud_transactions
from assets.features import (
    customer_activity_snapshots,
    point_in_time_training_data,
    shift_history,
)
from features.offline import historical_features
from features.store import FeatureSettings, quiet_feast

T = NOW - timedelta(days=10)
LATER = snapshot(7, T + timedelta(days=5), age=15.0, count_24h=50, count_30d=50, sum_30d=5000.0)
ROWS = [snapshot(7, T, age=10.0, count_24h=1, count_30d=1, sum_30d=10.0), LATER]


def events(*times: Any) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": 7,
            "event_timestamp": pd.to_datetime(list(times), utc=True),
            **REQUEST,
            "label": [i % 2 for i in range(len(times))],
        }
    )


def test_no_feature_from_after_the_label_time_leaks_into_its_row(
    feature_settings: FeatureSettings,
) -> None:
    store = make_store(feature_settings, ROWS, materialize=False)
    labels = events(
        T + timedelta(hours=1),  # sees the first snapshot only
        T + timedelta(days=2),  # first snapshot; its 24-hour window has expired (TTL 1 day)
        T + timedelta(days=5),  # exactly at the later snapshot: it is visible (at-or-before)
        T + timedelta(days=4, hours=23, minutes=59, seconds=59),  # one second before it
    )
    frame = point_in_time_training_data(store, labels, "fraud_v1").frame
    assert len(frame) == 4
    by_time = frame.set_index("event_timestamp")

    def row(at: Any) -> dict[str, float]:
        return {k: float(v) for k, v in by_time.loc[pd.Timestamp(at), FRAUD_FEATURES].items()}

    first = row(T + timedelta(hours=1))
    assert first["customer_age_days"] == 10.0 and first["txn_count_24h"] == 1.0
    assert first["avg_amount_30d"] == 10.0 and first["amount_vs_avg_30d"] == 8.0

    expired = row(T + timedelta(days=2))
    assert expired["customer_age_days"] == 10.0
    assert expired["txn_count_24h"] == 0.0  # outside the view's TTL: its default
    assert expired["avg_amount_30d"] == 10.0

    assert row(T + timedelta(days=5))["txn_count_24h"] == 50.0
    just_before = row(T + timedelta(days=4, hours=23, minutes=59, seconds=59))
    assert just_before["customer_age_days"] == 10.0 and just_before["txn_count_24h"] == 0.0

    # Nothing from the later snapshot reached a row stamped before it.
    early = frame[frame["event_timestamp"] < pd.Timestamp(LATER["event_timestamp"])]
    later_values = {15.0, 50.0, 5000.0, 100.0}  # age, counts, sum, its 30-day average
    assert not later_values & set(early[FRAUD_FEATURES].to_numpy().ravel().tolist())


def test_rows_outside_every_window_are_kept_not_dropped(
    feature_settings: FeatureSettings,
) -> None:
    # Feast's Dask store drops such rows; historical_features joins them again view by view.
    store = make_store(feature_settings, ROWS, materialize=False)
    labels = events(T - timedelta(hours=1), T + timedelta(days=40), T + timedelta(hours=1))
    with quiet_feast():
        feast_alone = store.get_historical_features(
            entity_df=labels, features=store.get_feature_service("fraud_v1")
        ).to_df()
    # If this fails, Feast keeps such rows now and the view-by-view join can go.
    assert len(feast_alone) == 1
    joined = historical_features(store, labels, "fraud_v1")
    assert joined["event_timestamp"].tolist() == labels["event_timestamp"].tolist()
    before = joined.iloc[0]
    assert np.isnan(before["customer_age_days"])  # the customer did not exist yet
    assert before["txn_count_24h"] == 0 and before["avg_amount_30d"] == REQUEST["amount"]
    stale = joined.iloc[1]
    assert stale["customer_age_days"] == 15.0  # the ten-year profile is still valid
    assert stale["txn_count_30d"] == 0 and stale["amount_vs_avg_30d"] == 1.0

    # Training data refuses rows that lack a feature without a default.
    with pytest.raises(Failure, match="1 of 3 events lack a feature"):
        point_in_time_training_data(store, labels, "fraud_v1")


def test_the_point_in_time_join_reproduces_the_generators_as_of_features(
    feature_settings: FeatureSettings,
) -> None:
    # Each generated transaction's features use only earlier transactions; the snapshots
    # joined as of each transaction's time must give exactly those values back.
    data = generate_fraud_transactions(n_rows=3000, n_customers=300, seed=11)
    transactions = shift_history(data.frame, pd.Timestamp(NOW).floor("D"))
    store = make_store(
        feature_settings,
        customer_activity_snapshots(transactions).to_dict("records"),
        materialize=False,
    )
    labels = transactions[["customer_id", "event_timestamp", *REQUEST, "label"]]
    dataset = point_in_time_training_data(store, labels, "fraud_v1")
    assert len(dataset.frame) == len(transactions)
    expected = transactions.sort_values(["event_timestamp", "customer_id"], kind="stable")
    np.testing.assert_array_equal(dataset.X, expected[FRAUD_FEATURES].to_numpy(np.float32))
    np.testing.assert_array_equal(dataset.y, expected["label"].to_numpy())
    # The shift is whole days: the hour of day still matches the timestamp.
    hours = dataset.frame["event_timestamp"].dt.hour.to_numpy(np.float64)
    np.testing.assert_array_equal(dataset.frame["hour_of_day"].to_numpy(), hours)
