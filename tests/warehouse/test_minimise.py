"""Data minimisation: user ids stored as keyed hashes (or as given, with a warning, without a
key), and inputs a version's ``log_exclude`` names rendered as ``"[excluded]"``."""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from registry import InvalidRequest, RoostSettings
from serving.dataplane import log_exclude
from serving.protocol import InferRequest, RequestInput
from serving.protocol.render import MAX_RENDERED_CHARS, render_inputs
from warehouse import WAL_DIR, ParquetSink, PredictionLogWriter, PredictionRecord, run_query
from warehouse.minimise import EXCLUDED, UserIdHasher, log_exclude_of

KEY = "test-secret-key"


def _record(rid: str, user: str | None) -> PredictionRecord:
    return PredictionRecord(
        request_id=rid, ts=datetime.now(UTC), model="m", version=1, inputs="{}", outputs="[]",
        latency_ms=1.0, status=200, user_id=user, protocol="rest", error=None,
    )  # fmt: skip


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_user_ids_are_stored_as_keyed_hashes(tmp_path: Path) -> None:
    writer = PredictionLogWriter(
        ParquetSink(tmp_path, "w1"), wal_dir=tmp_path / WAL_DIR, writer_id="w1",
        user_ids=UserIdHasher(KEY), recover_orphans=False,
    )  # fmt: skip
    writer.append(_record("r1", "alice@example.com"))
    writer.append_sync(_record("r2", "bob"))
    writer.append(_record("r3", None))
    writer.wal.commit()  # type: ignore[union-attr]
    assert b"alice@example.com" not in _all_bytes(tmp_path / WAL_DIR)  # not even in the WAL
    writer.close()
    _, rows = run_query(tmp_path, "select request_id, user_id from predictions order by 1")
    expected = hmac.new(KEY.encode(), b"alice@example.com", hashlib.sha256).hexdigest()
    assert rows[0] == ("r1", expected)
    assert rows[1][1] == UserIdHasher(KEY)("bob") and len(rows[1][1]) == 64
    assert rows[2] == ("r3", None)
    assert b"alice@example.com" not in _all_bytes(tmp_path)
    # the same id always gives the same digest (units, sticky experiments, erasure keep working)
    assert UserIdHasher(KEY)("alice@example.com") == expected
    assert UserIdHasher("another-key")("alice@example.com") != expected


def test_without_a_key_ids_are_stored_as_given_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = RoostSettings(home=tmp_path)
    with caplog.at_level(logging.WARNING, logger="warehouse.minimise"):
        writer = PredictionLogWriter.from_settings(settings)
    assert "ROOST_USER_ID_KEY is not set" in caplog.text
    writer.append(_record("r1", "alice"))
    writer.close()
    assert run_query(settings.logs_dir, "select user_id from predictions")[1] == [("alice",)]


def test_from_settings_hashes_with_the_environment_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ROOST_USER_ID_KEY", KEY)
    settings = RoostSettings(home=tmp_path)
    with caplog.at_level(logging.WARNING, logger="warehouse.minimise"):
        writer = PredictionLogWriter.from_settings(settings)
    assert "ROOST_USER_ID_KEY" not in caplog.text
    assert KEY not in repr(settings)  # a SecretStr
    writer.append(_record("r1", "alice"))
    writer.close()
    assert run_query(settings.logs_dir, "select user_id from predictions")[1] == [
        (UserIdHasher(KEY)("alice"),)
    ]


def test_buffer_mode_hashes_too(tmp_path: Path) -> None:
    writer = PredictionLogWriter(ParquetSink(tmp_path, "w1"), user_ids=UserIdHasher(KEY))
    writer.append(_record("r1", "alice"))
    writer.close()
    (path,) = tmp_path.rglob("*.parquet")
    assert pq.read_table(path).column("user_id").to_pylist() == [UserIdHasher(KEY)("alice")]


def _request(*tensors: tuple[str, str, Any]) -> InferRequest:
    inputs = []
    for name, datatype, data in tensors:
        array = np.asarray(data, dtype=object if datatype == "BYTES" else None)
        inputs.append(RequestInput(name, datatype, array.shape, array, {}))
    return InferRequest(None, inputs, None, {})


def test_excluded_inputs_and_features_are_never_rendered() -> None:
    request = _request(("ssn", "BYTES", [b"123-45-6789"]), ("amount", "FP32", [[1.5, 2.5]]),
                       ("big", "FP32", np.arange(20000, dtype=np.float32)))  # fmt: skip
    text = render_inputs(request, {"email": "a@b.c", "age": 41},
                         exclude=frozenset({"ssn", "email", "big"}))  # fmt: skip
    body = orjson.loads(text)
    assert body["inputs"][0] == {"name": "ssn", "datatype": "BYTES", "shape": [1],
                                 "data": EXCLUDED}  # fmt: skip
    assert body["inputs"][1]["data"] == [1.5, 2.5]
    assert body["inputs"][2] == {"name": "big", "datatype": "FP32", "shape": [20000],
                                 "data": EXCLUDED}  # no summary (sha256, min, max) either
    assert body["features"] == {"email": EXCLUDED, "age": 41}
    assert "123-45-6789" not in text and "a@b.c" not in text
    # without exclusions, nothing changes
    assert orjson.loads(render_inputs(request, {"age": 41}))["inputs"][0]["data"] == [
        "123-45-6789"
    ]
    # over the size budget, an excluded tensor is never replaced by a summary of its data
    huge = _request(("secret", "FP64", np.arange(4000, dtype=np.float64) * 1.123456789),
                    ("other", "FP64", np.arange(4000, dtype=np.float64) * 1.123456789))
    text = render_inputs(huge, exclude=frozenset({"secret"}))
    assert len(text) <= MAX_RENDERED_CHARS or "summary" in text
    assert orjson.loads(text)["inputs"][0]["data"] == EXCLUDED


def test_log_exclude_knob() -> None:
    assert log_exclude_of({}) == frozenset()
    assert log_exclude_of({"log_exclude": "ssn, email,"}) == {"ssn", "email"}
    assert log_exclude_of({"log_exclude": ["ssn"]}) == {"ssn"}
    with pytest.raises(InvalidRequest, match="log_exclude"):
        log_exclude_of({"log_exclude": 3})
    loaded: Any = SimpleNamespace(info=SimpleNamespace(config={"log_exclude": ["ssn"]},
                                                       model="m", version=1))  # fmt: skip
    assert log_exclude(loaded) == {"ssn"}
    loaded.info.config = {"log_exclude": 3}  # set behind the CLI's back: logged, not fatal
    assert log_exclude(loaded) == frozenset()
    assert log_exclude(None) == frozenset()
