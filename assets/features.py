"""The fraud model's feature assets: customer activity for Feast, point-in-time training data,
and the online store kept fresh by a schedule.

customer_activity       Parquet under $ROOST_HOME/features; applies the feature definitions
├── fraud_training_data get_historical_features over the fraud_v1 FeatureService
└── online_features     materialize_incremental up to now, every 10 minutes (a schedule)

The synthetic history is shifted to end at ``as_of`` (default: today, 00:00 UTC) so the online
store holds features young enough for their TTLs; the shift is whole days, so every feature,
``hour_of_day`` included, is unchanged and a day's runs give the same training data.

Training reads and materialization never collide. Feast moves a feature view to
``MATERIALIZING`` for the whole of a materialization and, in that state, refuses every read of
the view, offline ones included ("Feature view ... is in state 'MATERIALIZING' and cannot serve
features", raised by ``feast.utils._get_feature_views_to_use``). Two guards:

- **a Dagster concurrency pool** (:data:`FEAST_POOL`): the three assets that touch the Feast
  registry share a pool, and dagster.yaml limits every pool to one step at a time (op
  granularity), so a pipeline run's training read waits for the scheduled materialization's step
  to finish instead of failing; it costs nothing when nothing collides;
- **a retry with exponential back-off** on the training read (:func:`retry_if_materializing`) for
  the materializations Dagster does not see (``feast materialize`` from a shell, another
  instance, an instance without pool limits such as an ephemeral one): only that error is
  retried, after 15 s, 30 s, ... 8 min (about 16 minutes in all, longer than a 10-minute
  materialization); any other error fails the step at once.
"""

# Dagster reads these annotations at definition time: no `from __future__ import annotations`.
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AssetSelection,
    Config,
    DefaultScheduleStatus,
    Failure,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    Output,
    RetryRequested,
    ScheduleDefinition,
    asset,
    define_asset_job,
)

from assets.demo_data import FRAUD_FEATURES, LABEL, Dataset
from assets.pipeline import DemoModelSpec, dataset_metadata
from assets.resources import FeatureStoreResource
from features.store import apply_definitions

GROUP = "features"
ACTIVITY_FILE = "customer_activity.parquet"  # features.definitions reads it (relative path)
EVENTS_FILE = "fraud_transactions.parquet"  # labelled events: the point-in-time join's entities
REQUEST_FEATURES = ["amount", "hour_of_day", "is_foreign", "merchant_risk"]
MATERIALIZE_CRON = "*/10 * * * *"
# The Dagster concurrency pool of the steps that touch the Feast registry (limit 1: dagster.yaml).
FEAST_POOL = "feast"
# Training reads that meet a MATERIALIZING feature view retry after 15 s, 30 s, ..., 480 s.
READ_RETRIES = 6
READ_BACKOFF_S = 15.0


class FeatureDataConfig(Config):
    """``as_of``: the day (YYYY-MM-DD, UTC) the synthetic history ends; empty means today."""

    as_of: str = ""


def history_end(as_of: str) -> pd.Timestamp:
    """Midnight UTC of ``as_of`` (YYYY-MM-DD), or of today when it is empty."""
    if not as_of:
        return pd.Timestamp(datetime.now(UTC)).floor("D")
    try:
        day = pd.Timestamp(as_of)
    except ValueError as exc:
        raise Failure(f"as_of: expected a date YYYY-MM-DD, got {as_of!r}") from exc
    day = day.tz_localize("UTC") if day.tzinfo is None else day.tz_convert("UTC")
    return day.floor("D")


def shift_history(frame: pd.DataFrame, end: pd.Timestamp) -> pd.DataFrame:
    """The transactions moved by whole days so that the last day of history ends at ``end``."""
    last_day_end = frame["event_timestamp"].max().floor("D") + pd.Timedelta(days=1)
    out = frame.copy()
    out["event_timestamp"] = out["event_timestamp"] + (end - last_day_end)
    return out


def _trailing(
    customer: np.ndarray, seconds: np.ndarray, amount: np.ndarray, window_s: int
) -> tuple[np.ndarray, np.ndarray]:
    """Count and amount sum of each row's strictly earlier rows of the same customer within
    ``window_s``; rows sorted by (customer, seconds), as in :mod:`assets.demo_data`."""
    base = seconds - seconds.min()
    band = np.int64(base.max() + window_s + 1)
    keys = customer * band + base
    left = np.searchsorted(keys, np.maximum(keys - window_s, customer * band), side="left")
    right = np.searchsorted(keys, keys, side="left")
    sums = np.concatenate([[0.0], np.cumsum(amount)])
    return (right - left).astype(np.int64), sums[right] - sums[left]


def customer_activity_snapshots(transactions: pd.DataFrame) -> pd.DataFrame:
    """One snapshot per transaction of the customer's activity just before it, stamped with the
    transaction's time: joined as of that time it reproduces the transaction's features."""
    ordered = transactions.sort_values(["customer_id", "event_timestamp"], kind="stable")
    ordered = ordered.reset_index(drop=True)
    stamps = ordered["event_timestamp"]
    customer = ordered["customer_id"].to_numpy(np.int64)
    seconds = ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
    amount = ordered["amount"].to_numpy(np.float64)
    count_24h, _ = _trailing(customer, seconds, amount, 86_400)
    count_30d, sum_30d = _trailing(customer, seconds, amount, 30 * 86_400)
    snapshots = pd.DataFrame(
        {
            "customer_id": customer,
            "event_timestamp": stamps,
            "created": stamps,
            "customer_age_days": ordered["customer_age_days"].to_numpy(np.float64),
            "txn_count_24h": count_24h,
            "txn_count_30d": count_30d,
            "amount_sum_30d": sum_30d,
        }
    )
    snapshots = snapshots.sort_values(["event_timestamp", "customer_id"], kind="stable")
    return snapshots.reset_index(drop=True)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write atomically: a scheduled materialization may be reading the previous file."""
    partial = path.with_name(path.name + ".partial")
    frame.to_parquet(partial, index=False)
    os.replace(partial, path)


def point_in_time_training_data(store: Any, events: pd.DataFrame, service: str) -> Dataset:
    """The labelled ``events`` joined, each as of its own timestamp, to the FeatureService's
    features (see :func:`features.offline.historical_features`): only feature rows at or before
    an event, and within their view's TTL, reach its row; missing ones take their defaults."""
    from features.offline import historical_features

    frame = historical_features(store, events, service)
    missing = [c for c in FRAUD_FEATURES if c not in frame]
    if missing:
        raise Failure(f"feature service '{service}' does not provide {missing}")
    frame = frame.sort_values(["event_timestamp", "customer_id"], kind="stable")
    frame = frame[["customer_id", "event_timestamp", *FRAUD_FEATURES, LABEL]].reset_index(drop=True)
    frame[FRAUD_FEATURES] = frame[FRAUD_FEATURES].astype(np.float64)
    incomplete = int(frame[FRAUD_FEATURES].isna().any(axis=1).sum())
    if incomplete:
        raise Failure(
            f"{incomplete} of {len(frame)} events lack a feature that declares no default "
            "(a customer unknown at the event's time)"
        )
    return Dataset(
        name="fraud_transactions",
        frame=frame,
        feature_names=list(FRAUD_FEATURES),
        description=f"fraud transactions joined point-in-time to feature service {service!r}",
    )


def is_materializing_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is Feast refusing a read because a materialization is in progress."""
    text = str(exc)
    return isinstance(exc, ValueError) and "'MATERIALIZING'" in text and "cannot serve" in text


def retry_if_materializing(context: AssetExecutionContext, exc: BaseException) -> None:
    """Ask Dagster to run the step again later when ``exc`` is a materialization conflict
    (exponential back-off from :data:`READ_BACKOFF_S`); return otherwise."""
    if not is_materializing_conflict(exc):
        return
    wait = READ_BACKOFF_S * 2**context.retry_number
    context.log.warning(
        f"the feature store is materializing ({exc}); attempt {context.retry_number + 1} of "
        f"{READ_RETRIES + 1} failed, retrying in {wait:g} s"
    )
    raise RetryRequested(max_retries=READ_RETRIES, seconds_to_wait=wait) from exc


def fraud_feature_assets(spec: DemoModelSpec) -> list[AssetsDefinition]:
    """The customer-activity and online-features assets behind ``spec``'s FeatureService."""

    @asset(name="customer_activity", group_name=GROUP, compute_kind="feast", pool=FEAST_POOL)
    def customer_activity(
        config: FeatureDataConfig, features: FeatureStoreResource
    ) -> MaterializeResult[None]:
        """Customer-activity snapshots and labelled transactions, as Parquet for Feast."""
        end = history_end(config.as_of)
        transactions = shift_history(spec.load_data().frame, end)
        snapshots = customer_activity_snapshots(transactions)
        store = features.get_store()
        repo = features.settings().repo_path
        _write_parquet(snapshots, repo / ACTIVITY_FILE)
        _write_parquet(
            transactions[["customer_id", "event_timestamp", *REQUEST_FEATURES, LABEL]],
            repo / EVENTS_FILE,
        )
        apply_definitions(store)
        return MaterializeResult(
            metadata={
                "rows": len(snapshots),
                "customers": int(snapshots["customer_id"].nunique()),
                "history_end": MetadataValue.timestamp(end.to_pydatetime()),
                "path": MetadataValue.path(str(repo / ACTIVITY_FILE)),
            }
        )

    @asset(
        name="online_features",
        group_name=GROUP,
        deps=[customer_activity],
        compute_kind="feast",
        pool=FEAST_POOL,
        freshness_policy=FreshnessPolicy.time_window(
            fail_window=timedelta(minutes=30), warn_window=timedelta(minutes=15)
        ),
    )
    def online_features(features: FeatureStoreResource) -> MaterializeResult[None]:
        """Customer features materialized into the online store, incrementally up to now."""
        path = features.settings().repo_path / ACTIVITY_FILE
        if not path.exists():
            raise Failure(f"no customer activity at {path}: materialize customer_activity first")
        store = features.get_store()
        apply_definitions(store)
        end = datetime.now(UTC)
        store.materialize_incremental(end_date=end)
        activity = pd.read_parquet(path, columns=["customer_id", "event_timestamp"])
        latest = activity.groupby("customer_id")["event_timestamp"].max()
        fresh = {
            f"fresh_customers_{view.name}": int((latest >= end - view.ttl).sum())
            for view in store.list_feature_views()
            if view.ttl
        }
        return MaterializeResult(
            metadata={
                "materialized_through": MetadataValue.timestamp(end),
                "latest_feature_event": MetadataValue.timestamp(latest.max().to_pydatetime()),
                "feature_lag_minutes": round((end - latest.max()).total_seconds() / 60.0, 1),
                "online_store": features.settings().describe_online_store(),
                **fresh,
            }
        )

    return [customer_activity, online_features]


def fraud_training_data_asset(spec: DemoModelSpec) -> AssetsDefinition:
    """``spec``'s training data asset: labelled events joined point-in-time by Feast."""
    service = spec.feature_service
    if service is None:
        raise ValueError(f"model {spec.served_name!r} names no feature service")

    @asset(
        name=f"{spec.prefix}_training_data",
        group_name=spec.prefix,
        deps=["customer_activity"],
        compute_kind="feast",
        pool=FEAST_POOL,  # waits for a materialization step holding the pool's slot
    )
    def training_data(
        context: AssetExecutionContext, features: FeatureStoreResource
    ) -> Output[Dataset]:
        """Labelled transactions joined point-in-time to the model's Feast FeatureService."""
        events = pd.read_parquet(features.settings().repo_path / EVENTS_FILE)
        try:  # a fresh store per attempt: it reads the registry's current state
            dataset = point_in_time_training_data(features.get_store(), events, service)
        except ValueError as exc:
            retry_if_materializing(context, exc)  # a materialization outside the pool
            raise
        context.log.info(f"{len(dataset.frame)} rows from feature service {service!r}")
        return Output(dataset, metadata={**dataset_metadata(dataset), "feature_service": service})

    return training_data


def online_features_schedule() -> ScheduleDefinition:
    """Materialize the online store every 10 minutes, so its freshness shows in the UI."""
    job = define_asset_job(
        "materialize_online_features",
        selection=AssetSelection.assets("online_features"),
        description="Incrementally materialize customer features into the online store.",
    )
    # Running from the start: with `roost up`'s daemon the online store stays fresh unattended.
    return ScheduleDefinition(
        name="online_features_every_10_minutes",
        cron_schedule=MATERIALIZE_CRON,
        job=job,
        default_status=DefaultScheduleStatus.RUNNING,
    )
