"""The fraud demo's feature definitions: module-level, declarative Feast objects.

customer (entity, join key ``customer_id``)
└── customer_activity.parquet (FileSource): one snapshot per customer transaction, taken just
    before it, so a point-in-time join at a transaction's timestamp sees only earlier activity
    ├── customer_profile       customer_age_days                     TTL 10 years
    ├── customer_activity_24h  txn_count_24h (default 0)             TTL 1 day
    └── customer_activity_30d  txn_count_30d, amount_sum_30d (0, 0)  TTL 30 days
transaction (RequestSource): amount, hour_of_day, is_foreign, merchant_risk
spend_vs_average (on-demand, python): avg_amount_30d, amount_vs_avg_30d
fraud_v1 (FeatureService): the features of the fraud model's first feature set

Each window view's TTL is its window: a snapshot older than the window says nothing about it,
so Feast's point-in-time join leaves it null and the online lookup treats it as missing.
A field's ``default`` tag is the value a missing or stale feature takes (an empty count is 0);
a field without one makes the lookup fail for that entity (an unknown customer is a 404).

The FileSource path is relative: Feast resolves it against the repository path, which Roost
sets to ``$ROOST_HOME/features`` (see :mod:`features.store`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64
from feast.value_type import ValueType

DEFAULT_TAG = "default"
"""Field tag holding the value a missing or stale feature takes (parsed as a float)."""

ACTIVITY_FILE = "customer_activity.parquet"

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.INT64,
    description="A card holder.",
)

customer_activity_source = FileSource(
    name="customer_activity",
    path=ACTIVITY_FILE,
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="Customer activity snapshots, one per transaction, taken just before it.",
)

customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="customer_age_days", dtype=Float64, description="Account age in days."),
    ],
    source=customer_activity_source,
    online=True,
    description="Slow-moving account facts; no default: a customer without them is unknown.",
)

customer_activity_24h = FeatureView(
    name="customer_activity_24h",
    entities=[customer],
    ttl=timedelta(days=1),
    schema=[
        Field(
            name="txn_count_24h",
            dtype=Int64,
            description="Transactions in the preceding 24 hours.",
            tags={DEFAULT_TAG: "0"},
        ),
    ],
    source=customer_activity_source,
    online=True,
    description="Activity in the last day.",
)

customer_activity_30d = FeatureView(
    name="customer_activity_30d",
    entities=[customer],
    ttl=timedelta(days=30),
    schema=[
        Field(
            name="txn_count_30d",
            dtype=Int64,
            description="Transactions in the preceding 30 days.",
            tags={DEFAULT_TAG: "0"},
        ),
        Field(
            name="amount_sum_30d",
            dtype=Float64,
            description="Sum of their amounts.",
            tags={DEFAULT_TAG: "0"},
        ),
    ],
    source=customer_activity_source,
    online=True,
    description="Activity in the last 30 days.",
)

transaction = RequestSource(
    name="transaction",
    schema=[
        Field(name="amount", dtype=Float64),
        Field(name="hour_of_day", dtype=Float64),
        Field(name="is_foreign", dtype=Float64),
        Field(name="merchant_risk", dtype=Float64),
    ],
    description="What the card network knows about the transaction being scored.",
)


@on_demand_feature_view(  # type: ignore[untyped-decorator]
    sources=[customer_activity_30d, transaction],
    schema=[
        Field(name="avg_amount_30d", dtype=Float64),
        Field(name="amount_vs_avg_30d", dtype=Float64),
    ],
    mode="python",
    description="The transaction's amount against the customer's 30-day average.",
)
def spend_vs_average(inputs: dict[str, list[Any]]) -> dict[str, list[float]]:
    # A missing window (null, or NaN from a point-in-time join) counts as no activity: the
    # average is then the transaction's own amount, as in assets.demo_data. Rounded like it.
    averages: list[float] = []
    ratios: list[float] = []
    for amount, count, total in zip(
        inputs["amount"], inputs["txn_count_30d"], inputs["amount_sum_30d"], strict=True
    ):
        empty = count is None or count != count or count <= 0 or total is None or total != total
        average = float(amount) if empty else round(float(total) / float(count) * 100.0) / 100.0
        averages.append(average)
        ratios.append(float(amount) / max(average, 0.01))
    return {"avg_amount_30d": averages, "amount_vs_avg_30d": ratios}


fraud_v1 = FeatureService(
    name="fraud_v1",
    features=[customer_profile, customer_activity_24h, customer_activity_30d, spend_vs_average],
    description="Features of the fraud model's first feature set; request-time: transaction.",
    tags={"model": "fraud"},
)

FRAUD_FEATURE_SERVICE = fraud_v1.name

OBJECTS: list[Any] = [
    customer,
    customer_activity_source,
    customer_profile,
    customer_activity_24h,
    customer_activity_30d,
    transaction,
    spend_vs_average,
    fraud_v1,
]
"""Everything :func:`features.store.apply_definitions` applies, in dependency order."""
