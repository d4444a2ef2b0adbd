"""The prediction log with sealed files on S3 (moto's server mode on loopback stands in for S3).

The write-ahead log stays on local disk; sealed Parquet files are uploaded whole to their final
keys, and ``warehouse.connect`` / ``roost sql`` read them back through pyarrow and fsspec.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from s3 import MotoS3, moto_server

from orchestration import cli
from orchestration.cli import main
from registry import RoostSettings
from registry.storage import Location, logs_location
from warehouse import PredictionLogWriter, PredictionRecord, connect
from warehouse.writer import ObjectStoreSink

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def s3() -> MotoS3:
    return moto_server()


@pytest.fixture
def bucket(s3: MotoS3) -> str:
    return s3.fresh_bucket("logs")


@pytest.fixture
def s3_settings(tmp_path: Path, s3: MotoS3, bucket: str) -> RoostSettings:
    return RoostSettings(
        home=tmp_path / "roost", logs_url=f"s3://{bucket}/logs", s3_endpoint_url=s3.endpoint_url,
        log_flush_interval_s=0.2,
    )


def record(n: int, model: str = "iris", day: int = 1) -> PredictionRecord:
    return PredictionRecord(
        request_id=f"req-{n}", ts=T0.replace(day=day), model=model, version=1,
        inputs='{"x": [1.0]}', outputs='{"y": [0]}', latency_ms=1.0, status=200,
        user_id=None, protocol="v2-rest", error=None,
    )


def write(settings: RoostSettings, records: list[PredictionRecord]) -> None:
    writer = PredictionLogWriter.from_settings(settings)
    with writer:
        for r in records:
            writer.append(r)
    assert writer.pending == 0


def test_sealed_files_land_in_s3_and_connect_reads_them(
    s3_settings: RoostSettings, s3: MotoS3, bucket: str
) -> None:
    records = [record(i, "iris", 1 + i % 2) for i in range(40)] + [record(100 + i, "fraud")
                                                                     for i in range(10)]
    write(s3_settings, records)

    keys = s3.keys(bucket)
    assert keys and all(k.startswith("logs/predictions/model=") for k in keys)
    assert all(k.endswith(".parquet") and "/.tmp" not in k for k in keys)
    assert {k.split("/")[2:4][0] for k in keys} == {"model=iris", "model=fraud"}
    # The WAL is local; nothing sealed stays on local disk.
    assert (s3_settings.logs_dir / "wal").is_dir()
    assert not list(s3_settings.logs_dir.rglob("*.parquet"))
    assert not (s3_settings.logs_dir / "predictions").exists()

    con = connect(s3_settings.logs_dir, logs_location=logs_location(s3_settings))
    try:
        rows = con.execute(
            "SELECT model, CAST(date AS VARCHAR), count(*) FROM predictions GROUP BY ALL "
            "ORDER BY ALL"
        ).fetchall()
    finally:
        con.close()
    assert rows == [("fraud", "2024-05-01", 10), ("iris", "2024-05-01", 20),
                    ("iris", "2024-05-02", 20)]


def test_roost_sql_reads_the_log_on_s3(s3_settings: RoostSettings, s3: MotoS3) -> None:
    write(s3_settings, [record(i) for i in range(7)])
    assert s3_settings.logs_url is not None
    env = {"ROOST_HOME": str(s3_settings.home), "ROOST_LOGS_URL": s3_settings.logs_url,
           "ROOST_S3_ENDPOINT_URL": s3.endpoint_url}
    cli._home.cache_clear()  # the CLI caches the home it found, per process
    result = CliRunner().invoke(
        main, ["sql", "--json", "SELECT model, count(*) AS n FROM predictions GROUP BY model"],
        env=env, catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"model": "iris", "n": 7}]


def test_empty_bucket_gives_an_empty_view(s3_settings: RoostSettings) -> None:
    con = connect(s3_settings.logs_dir, logs_location=logs_location(s3_settings))
    try:
        assert con.execute("SELECT count(*) FROM predictions").fetchone() == (0,)
    finally:
        con.close()


def test_failed_upload_leaves_no_object_and_the_retry_lands_exactly_once(
    s3_settings: RoostSettings, s3: MotoS3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_upload = Location.upload

    def flaky(self: Location, local_file: Path, relative: str) -> str:
        calls.append(relative)
        if len(calls) == 1:
            # What a reader may see mid-failure: nothing under the final name.
            assert not [k for k in s3.keys(bucket) if k.endswith(relative)]
            raise OSError("connection reset by peer")
        return real_upload(self, local_file, relative)

    monkeypatch.setattr(Location, "upload", flaky)
    writer = PredictionLogWriter.from_settings(s3_settings)
    with writer:
        for i in range(25):
            writer.append(record(i))
    assert writer.pending == 25  # the upload failed: the segment stays in the local WAL
    assert s3.keys(bucket) == []
    write(s3_settings, [])  # the next writer recovers the segment and seals it again
    assert len(calls) == 2
    assert not list(s3_settings.logs_dir.rglob("*.parquet"))  # the staged copy is gone too
    keys = s3.keys(bucket)
    assert len(keys) == 1 and not keys[0].split("/")[-1].startswith(".")
    con = connect(s3_settings.logs_dir, logs_location=logs_location(s3_settings))
    try:
        assert con.execute("SELECT count(DISTINCT request_id), count(*) FROM predictions"
                           ).fetchone() == (25, 25)
    finally:
        con.close()


def test_every_visible_object_is_a_whole_parquet_file(
    s3_settings: RoostSettings, tmp_path: Path
) -> None:
    location = logs_location(s3_settings)
    sink = ObjectStoreSink(location, tmp_path / "staging", writer_id="w1")
    urls: list[Any] = sink.write_batch([record(i) for i in range(500)])
    assert len(urls) == 1 and urls[0].startswith(location.url + "/predictions/model=iris/")
    (path,) = location.glob("predictions/**/*.parquet")
    with location.fs.open(path, "rb") as handle:
        assert pq.read_table(handle).num_rows == 500
    assert not list((tmp_path / "staging").rglob("*.parquet"))
