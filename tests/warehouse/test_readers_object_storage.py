"""Every reader of the prediction log honours ``ROOST_LOGS_URL``: with the sealed files only in S3
(moto's server mode on loopback), the canary sensor, the experiment/canary samples, the alert
``LogSource``, drift's logged-inputs reader and staging's replay see them; retention expires
partitions there; erasure refuses. Feedback stays local (``logs_dir``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import canary_testing
import pytest
from canary_testing import Arm, every, lognormal, write_log
from dagster import DagsterInstance, SensorResult, build_sensor_context
from roost_testing import deploy_model, make_linear_onnx
from s3 import MotoS3, moto_server

from analysis.samples import read_arms
from assets.resources import RegistryResource
from assets.spec import ModelSpec, parse_spec
from assets.staging import production_samples
from monitoring.alerts.logsource import LogSource
from monitoring.logged_inputs import logged_days, read_logged_inputs
from orchestration.canary_sensor import make_canary_sensor
from registry import InvalidRequest, Registry, RoostSettings, State
from registry.rollout import RolloutPhase, RolloutStatus
from registry.storage import Location, logs_location
from warehouse import PredictionLogWriter, PredictionRecord
from warehouse.erasure import erase_user
from warehouse.minimise import UserIdHasher
from warehouse.retention import apply_retention
from warehouse.tombstones import ERASURE_DIR
from warehouse.writer import ObjectStoreSink

MODEL = "churn"
DWELL_S = 60.0
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def s3() -> MotoS3:
    return moto_server()


@pytest.fixture
def settings(tmp_path: Path, s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> RoostSettings:
    """Settings (and the ``ROOST_*`` environment, for Dagster resources) with the sealed log in a
    fresh bucket."""
    bucket = s3.fresh_bucket("readers")
    for name, value in s3.env(bucket).items():
        monkeypatch.setenv(name, value)
    return RoostSettings(home=tmp_path / "roost", logs_url=f"s3://{bucket}/logs",
                         s3_endpoint_url=s3.endpoint_url)


@pytest.fixture
def location(settings: RoostSettings) -> Location:
    return logs_location(settings)


@pytest.fixture
def s3_log(settings: RoostSettings, location: Location,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``canary_testing.write_log`` seals to S3 (feedback still goes to the local logs dir)."""
    staging = settings.logs_dir / "upload"
    monkeypatch.setattr(canary_testing, "ParquetSink",
                        lambda logs: ObjectStoreSink(location, staging, writer_id="t"))
    yield


def _seal(location: Location, staging: Path, records: list[PredictionRecord]) -> None:
    with PredictionLogWriter(ObjectStoreSink(location, staging, writer_id="t"),
                             flush_rows=100_000) as writer:
        for r in records:
            writer.append(r)


def _record(n: int, ts: datetime, *, inputs: str = "{}", status: int = 200,
            user: str | None = None, shadow: bool = False) -> PredictionRecord:
    return PredictionRecord(
        request_id=f"r{n}", ts=ts, model=MODEL, version=1, inputs=inputs, outputs="[]",
        latency_ms=1.0, status=status, user_id=user, protocol="v2-rest", error=None,
        shadow=shadow,
    )


def test_read_arms_sees_rows_only_in_s3(
    settings: RoostSettings, location: Location, s3_log: None
) -> None:
    write_log(settings.logs_dir, T0, Arm("production", 1, "production", 300),
              Arm("canary", 2, "canary", 100, status=every(10, 500)), model=MODEL)
    assert not list(settings.logs_dir.rglob("predictions/**/*.parquet"))
    assert read_arms(settings.logs_dir, MODEL, T0, T0 + timedelta(hours=1)) == []
    arms = read_arms(settings.logs_dir, MODEL, T0, T0 + timedelta(hours=1),
                     logs_location=location)
    summary = [(a.arm, a.version, a.requests, a.server_errors, a.labelled) for a in arms]
    assert summary == [("canary", 2, 100, 10, 90), ("production", 1, 300, 0, 300)]



def test_fairness_reads_the_day_from_s3(settings: RoostSettings, location: Location) -> None:
    """The daily fairness asset's reader: decisions and logged attributes of rows only in S3."""
    from assets.fairness import logged_frame

    records = [
        replace(_record(n, T0 + timedelta(seconds=n),
                        inputs=json.dumps({"inputs": [], "attributes": {"age_band": band}})),
                outputs=json.dumps([{"name": "label", "datatype": "INT64", "shape": [1],
                                     "data": [n % 2]}]))
        for n, band in enumerate(["40_plus", "under_40", "under_40"])
    ]
    _seal(location, settings.logs_dir / "upload", records)
    assert logged_frame(settings.logs_dir, MODEL, T0.date()).empty
    frame = logged_frame(settings.logs_dir, MODEL, T0.date(), logs_location=location)
    assert sorted(zip(frame["age_band"], frame["predicted"], strict=True)) == [
        ("40_plus", 0.0), ("under_40", 0.0), ("under_40", 1.0)]

def test_log_source_counts_s3_rows(settings: RoostSettings, location: Location) -> None:
    records = [_record(i, T0 + timedelta(seconds=i), status=500 if i % 4 == 0 else 200)
               for i in range(20)]
    _seal(location, settings.logs_dir / "upload", records)
    window = (T0 - timedelta(minutes=1), T0 + timedelta(minutes=5))
    with LogSource(settings.logs_dir, logs_location=location) as source:
        assert source.models() == [MODEL]
        counts = source.request_counts(MODEL, *window)
    assert (counts.total, counts.server_errors) == (20, 5)
    with LogSource(settings.logs_dir) as local:  # the local root holds nothing
        assert local.request_counts(MODEL, *window).total == 0


def test_logged_inputs_and_days_read_through_fsspec(
    settings: RoostSettings, location: Location
) -> None:
    def tensor(rows: list[list[float]]) -> str:
        flat = [v for row in rows for v in row]
        return json.dumps({"inputs": [{"name": "x", "datatype": "FP64",
                                       "shape": [len(rows), 2], "data": flat}]})

    day1, day2 = T0, T0 + timedelta(days=1)
    records = [_record(i, day1, inputs=tensor([[i, 2 * i], [i, 0]])) for i in range(10)]
    records += [_record(100, day1, inputs=tensor([[9, 9]]), shadow=True),
                _record(101, day1, inputs=tensor([[9, 9]]), status=500),
                _record(200, day2, inputs=tensor([[1, 1]]))]
    _seal(location, settings.logs_dir / "upload", records)

    assert logged_days(settings.logs_dir, MODEL) == []
    assert logged_days(settings.logs_dir, MODEL, logs_location=location) == [
        day1.date(), day2.date()]
    read = read_logged_inputs(settings.logs_dir, MODEL, day1.date(), ["a", "b"],
                              logs_location=location)
    assert (read.requests, read.rows, len(read.frame)) == (10, 20, 20)
    assert (read.skipped_shadow, read.skipped_failed) == (1, 1)
    assert sorted(read.frame["b"].tolist()) == sorted([2.0 * i for i in range(10)] + [0.0] * 10)
    sampled = read_logged_inputs(settings.logs_dir, MODEL, day1.date(), ["a", "b"],
                                 logs_location=location, max_rows=5)
    assert len(sampled.frame) == 5


def test_staging_replays_production_requests_from_s3(
    settings: RoostSettings, location: Location
) -> None:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
                                   "data": [1.0, 2.0]}]})
    _seal(location, settings.logs_dir / "upload",
          [_record(i, T0 + timedelta(seconds=i), inputs=body) for i in range(5)])
    staged = settings.model_copy(update={"scope": "staging"})
    samples = production_samples(staged, MODEL, 3)
    assert len(samples) == 3 and samples[0].body["inputs"][0]["data"] == [1.0, 2.0]


# The canary sensor, end to end with the sealed log only in S3.


@pytest.fixture
def spec() -> ModelSpec:
    return parse_spec({
        "name": MODEL, "held_out": {"demo": "fraud"},
        "canary": {"schedule": [5, 50, 100], "step_interval_s": DWELL_S, "alpha": 0.05,
                   "min_requests": 200},
    })


@pytest.fixture
def registry(settings: RoostSettings) -> Iterator[Registry]:
    reg = Registry.from_settings(settings)
    yield reg
    reg.close()


@pytest.fixture
def canary(registry: Registry, spec: ModelSpec) -> RolloutStatus:
    deploy_model(registry, MODEL, make_linear_onnx(seed=1))
    info = registry.register_version(MODEL, make_linear_onnx(seed=2))
    registry.transition(MODEL, info.version, State.VALIDATING, reason="t")
    registry.transition(MODEL, info.version, State.VALIDATED, reason="t")
    registry.start_rollout(MODEL, 2, schedule=spec.canary.schedule, actor="ops", reason="v2")
    registry.staging_passed(MODEL, 2, evidence={}, actor="dagster")
    return registry.begin_canary(MODEL, 2, actor="dagster")


def _tick(settings: RoostSettings, spec: ModelSpec, now: datetime) -> SensorResult:
    sensor = make_canary_sensor([spec], interval_s=5, clock=lambda: now)
    context = build_sensor_context(
        instance=DagsterInstance.ephemeral(),
        resources={"registry": RegistryResource(home=str(settings.home))},
    )
    result = sensor(context)
    assert isinstance(result, SensorResult)
    return result


@pytest.mark.parametrize("canary_errors, expected", [
    (every(200, 500), (RolloutPhase.CANARY, 50.0)),  # as healthy as production: advance
    (every(20, 500), (RolloutPhase.ROLLED_BACK, 0.0)),  # 5 % errors against 0.5 %: roll back
])
def test_canary_sensor_decides_on_the_log_in_s3(
    settings: RoostSettings, registry: Registry, canary: RolloutStatus, spec: ModelSpec,
    s3_log: None, s3: MotoS3, canary_errors: object, expected: tuple[RolloutPhase, float],
) -> None:
    assert canary.step_started_at is not None
    write_log(settings.logs_dir, canary.step_started_at,
              Arm("production", 1, "production", 4000, status=every(200, 500)),
              Arm("canary", 2, "canary", 1000, status=canary_errors, latency=lognormal(20, 2)),
              model=MODEL)
    assert not list(settings.logs_dir.rglob("predictions/**/*.parquet"))  # only in S3
    now = canary.step_started_at + timedelta(seconds=DWELL_S, milliseconds=1)
    _tick(settings, spec, now)
    after = registry.get_rollout(MODEL)
    assert after is not None and (after.phase, after.percent) == expected


# Retention works on object storage; erasure refuses.


def test_retention_expires_s3_partitions(
    settings: RoostSettings, location: Location, s3: MotoS3
) -> None:
    today = date(2024, 6, 15)
    ages = (0, 30, 31, 45)
    records = [_record(a * 10 + i, datetime(2024, 6, 15, 12, tzinfo=UTC) - timedelta(days=a))
               for a in ages for i in range(3)]
    _seal(location, settings.logs_dir / "upload", records)
    staging = settings.model_copy(update={"scope": "staging"})
    _seal(logs_location(staging), settings.logs_dir / "upload", [_record(1, T0)])  # 45 days

    dry = apply_retention(settings, dry_run=True, today=today)
    assert len(location.glob("predictions/**/*.parquet")) == 4
    report = apply_retention(settings, today=today)
    expected = sorted(
        [(location.url_of(f"predictions/model={MODEL}/date={today - timedelta(days=a)}"), 3)
         for a in (31, 45)]
        + [(f"{location.url}-staging/predictions/model={MODEL}/date={T0.date()}", 1)]
    )
    assert sorted((p.path, p.rows) for p in report.partitions) == expected
    assert [(p.path, p.rows) for p in dry.partitions] == [
        (p.path, p.rows) for p in report.partitions]
    left = {p.rsplit("/", 2)[-2] for p in location.glob("predictions/**/*.parquet")}
    assert left == {f"date={today - timedelta(days=a)}" for a in (0, 30)}
    assert logs_location(staging).glob("predictions/**/*.parquet") == []


def test_erasure_refuses_a_log_on_object_storage(
    settings: RoostSettings, location: Location
) -> None:
    _seal(location, settings.logs_dir / "upload", [_record(1, T0, user="u1")])
    with pytest.raises(InvalidRequest, match="ROOST_LOGS_URL"):
        erase_user(settings.logs_dir, "u1", hasher=UserIdHasher(None), logs_location=location)
    assert not (settings.logs_dir / ERASURE_DIR).exists()  # not even a tombstone
    assert len(location.glob("predictions/**/*.parquet")) == 1
