"""OnlineFeatures against a real SQLite-backed Feast store: assembly, defaults, TTLs, errors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pandas as pd
import pytest
from feast import FeatureStore
from feature_testing import NOW, REQUEST

from assets.demo_data import FRAUD_FEATURES
from assets.features import point_in_time_training_data
from features.online import OnlineFeatures
from features.store import FeatureSettings, repo_config
from registry import InvalidRequest, NotFound
from registry.errors import ServiceUnavailable

SERVICE = "fraud_v1"


def instance(customer_id: Any, **overrides: Any) -> dict[str, Any]:
    return {"entities": {"customer_id": customer_id}, "features": {**REQUEST, **overrides}}


def online(settings: FeatureSettings, store: Any = None, at: Any = NOW) -> OnlineFeatures:
    return OnlineFeatures(settings, store=store, clock=lambda: at.timestamp())


def as_dict(row: list[Any]) -> dict[str, Any]:
    return dict(zip(FRAUD_FEATURES, row, strict=True))


class CountingStore(FeatureStore):
    """The real store, counting its online reads."""

    calls = 0

    def get_online_features(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super().get_online_features(*args, **kwargs)


def test_a_batch_is_one_lookup_in_signature_order(
    feature_settings: FeatureSettings, standard_store: Any
) -> None:
    store = CountingStore(
        repo_path=str(feature_settings.repo_path), config=repo_config(feature_settings)
    )
    lookup = online(feature_settings, store).lookup(
        SERVICE, FRAUD_FEATURES, [instance(1), instance(1, amount=25), instance(2)]
    )
    assert store.calls == 1
    assert lookup.feature_names == tuple(FRAUD_FEATURES)
    # Customer 1: fresh everywhere; the 30-day average is 600 / 12.
    assert lookup.rows[0] == [80.0, 3.0, 1.0, 0.4, 51.9, 3, 50.0, 1.6]
    assert as_dict(lookup.rows[1])["amount_vs_avg_30d"] == 0.5
    assert lookup.defaulted[:2] == [[], []]
    log = lookup.to_log()
    assert log["feature_service"] == SERVICE
    assert log["features"][0] == as_dict(lookup.rows[0])


def test_feast_returns_stale_rows_as_present_so_the_lookup_checks_ttls(
    feature_settings: FeatureSettings, standard_store: Any
) -> None:
    # Customer 2's 24-hour snapshot is three days old: Feast's online read still returns it.
    raw = standard_store.get_online_features(
        features=["customer_activity_24h:txn_count_24h"],
        entity_rows=[{"customer_id": 2}],
    ).to_dict()
    assert raw["txn_count_24h"] == [1]

    lookup = online(feature_settings).lookup(SERVICE, FRAUD_FEATURES, [instance(2)])
    row = as_dict(lookup.rows[0])
    assert row["txn_count_24h"] == 0  # stale -> missing -> the declared default
    assert row["customer_age_days"] == 400.0 and row["avg_amount_30d"] == 50.0
    assert lookup.defaulted == [["txn_count_24h"]]


def test_stale_windows_take_defaults_and_on_demand_features_are_recomputed(
    feature_settings: FeatureSettings, standard_store: Any
) -> None:
    # Customer 3 was last seen 40 days ago: both windows are stale. Feast alone would compute
    # the average from the stale 30-day sum (15.0); with the window missing it is the amount.
    lookup = online(feature_settings).lookup(SERVICE, FRAUD_FEATURES, [instance(3), instance(1)])
    row = as_dict(lookup.rows[0])
    assert row["customer_age_days"] == 900.0
    assert row["txn_count_24h"] == 0
    assert row["avg_amount_30d"] == 80.0 and row["amount_vs_avg_30d"] == 1.0
    assert lookup.defaulted[0] == ["txn_count_24h", "txn_count_30d", "amount_sum_30d"]
    assert as_dict(lookup.rows[1])["avg_amount_30d"] == 50.0  # the fresh row is untouched


def test_an_unknown_entity_without_defaults_is_a_404_naming_it(
    feature_settings: FeatureSettings, standard_store: Any
) -> None:
    with pytest.raises(NotFound) as caught:
        online(feature_settings).lookup(SERVICE, FRAUD_FEATURES, [instance(1), instance(4)])
    message = caught.value.message
    assert caught.value.status_code == 404
    assert "instances[1]" in message and "customer_id=4" in message
    assert "'customer_profile'" in message and "not in the online store" in message
    assert "customer_age_days" in message


def test_features_older_than_the_ttl_are_missing(
    feature_settings: FeatureSettings, standard_store: Any
) -> None:
    later = NOW + timedelta(days=3651)  # beyond customer_profile's ten-year TTL
    with pytest.raises(NotFound) as caught:
        online(feature_settings, at=later).lookup(SERVICE, FRAUD_FEATURES, [instance(1)])
    assert "older than the view's TTL of 3650 days" in caught.value.message
    assert "customer_id=1" in caught.value.message


def test_online_and_offline_features_agree_for_the_same_entity_and_time(
    feature_settings: FeatureSettings, standard_store: Any
) -> None:
    customers = [1, 2, 3]
    events = pd.DataFrame(
        {
            "customer_id": customers,
            "event_timestamp": pd.Timestamp(NOW),
            **{k: [v] * len(customers) for k, v in REQUEST.items()},
            "label": 0,
        }
    )
    offline = point_in_time_training_data(standard_store, events, SERVICE).frame
    lookup = online(feature_settings, at=NOW).lookup(
        SERVICE, FRAUD_FEATURES, [instance(c) for c in customers]
    )
    online_rows = pd.DataFrame(lookup.rows, columns=FRAUD_FEATURES).astype(float)
    offline_rows = offline.set_index("customer_id").loc[customers, FRAUD_FEATURES]
    pd.testing.assert_frame_equal(online_rows, offline_rows.reset_index(drop=True))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"customer_id": 1}, 'instances[0]: expected {"entities"'),
        ({"entities": {}, "features": REQUEST}, "instances[0].entities: missing entity key"),
        ({"entities": {"customer_id": "1"}, "features": REQUEST},
         "instances[0].entities.customer_id: expected an integer, got '1'"),
        ({"entities": {"customer_id": 1, "card": 2}, "features": REQUEST},
         "unknown entity key 'card'"),
        ({"entities": {"customer_id": 1}, "features": {**REQUEST, "amount": "12"}},
         "instances[0].features.amount: expected a number"),
        ({"entities": {"customer_id": 1}, "features": {"amount": 1.0}},
         "instances[0].features: missing request-time value 'hour_of_day'"),
        ({"entities": {"customer_id": 1}, "features": {**REQUEST, "txn_count_24h": 0}},
         "unexpected value 'txn_count_24h' (the feature store provides it)"),
        ({"entities": {"customer_id": 1}, "features": REQUEST, "extra": 1},
         "instances[0]: unknown key 'extra'"),
    ],
)
def test_bad_instances_are_400s_naming_the_field(
    feature_settings: FeatureSettings, standard_store: Any, bad: Any, message: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        online(feature_settings).lookup(SERVICE, FRAUD_FEATURES, [bad])
    assert message in caught.value.message


def test_features_the_service_lacks_come_from_the_request(
    feature_settings: FeatureSettings, standard_store: Any
) -> None:
    names = [*FRAUD_FEATURES, "device_score"]
    lookup = online(feature_settings).lookup(SERVICE, names, [instance(1, device_score=0.25)])
    assert lookup.rows[0][-1] == 0.25
    with pytest.raises(InvalidRequest, match="missing request-time value 'device_score'"):
        online(feature_settings).lookup(SERVICE, names, [instance(1)])


def test_a_store_without_the_service_is_a_503_naming_the_store(
    feature_settings: FeatureSettings,
) -> None:
    with pytest.raises(ServiceUnavailable) as caught:
        online(feature_settings).lookup(SERVICE, FRAUD_FEATURES, [instance(1)])
    message = caught.value.message
    assert caught.value.status_code == 503
    assert "feature service 'fraud_v1'" in message
    assert f"SQLite online store at {feature_settings.repo_path / 'online_store.db'}" in message
