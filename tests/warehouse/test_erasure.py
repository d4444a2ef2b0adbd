"""GDPR erasure: zero rows of the user left (Parquet, WAL, feedback) while writers keep writing,
every other row intact; dry runs change nothing; audited without the id."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from registry import Registry
from warehouse import WAL_DIR, ParquetSink, PredictionLogWriter, PredictionRecord, run_query
from warehouse.erasure import erase_user, record_erasure
from warehouse.feedback import FeedbackRecord, write_feedback
from warehouse.minimise import UserIdHasher

KEY = "erasure-test-key"
HASHER = UserIdHasher(KEY)
VICTIM = "victim@example.com"
USERS = [VICTIM, *(f"user-{i}" for i in range(7))]


def _record(user: str, ts: datetime, model: str = "m") -> PredictionRecord:
    return PredictionRecord(
        request_id=uuid.uuid4().hex, ts=ts, model=model, version=1, inputs="{}", outputs="[]",
        latency_ms=1.0, status=200, user_id=user, protocol="rest", error=None,
    )  # fmt: skip


def _writer(logs: Path, writer_id: str, **kwargs: object) -> PredictionLogWriter:
    return PredictionLogWriter(
        ParquetSink(logs, writer_id), wal_dir=logs / WAL_DIR, writer_id=writer_id,
        user_ids=HASHER, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def _seed(logs: Path) -> dict[str, list[PredictionRecord]]:
    """Three days of history for every user, in two models, sealed; feedback for half of it;
    and a dead writer's unsealed segment."""
    now = datetime.now(UTC)
    by_user: dict[str, list[PredictionRecord]] = {u: [] for u in USERS}
    writer = _writer(logs, "seed", recover_orphans=False)
    for day in range(3):
        for i, user in enumerate(USERS * 5):
            record = _record(user, now - timedelta(days=day, minutes=i), "m" if i % 2 else "n")
            by_user[user].append(record)
            writer.append(record)
    writer.close()
    feedback = [
        FeedbackRecord(r.request_id, r.model, 1, None, 1.0, None, r.ts + timedelta(minutes=1))
        for records in by_user.values() for r in records[::2]
    ]  # fmt: skip
    write_feedback(logs, feedback)
    dead = _writer(logs, "dead", recover_orphans=False)
    for user in USERS:
        record = _record(user, now - timedelta(minutes=1))
        by_user[user].append(record)
        dead.append(record)
    assert dead.wal is not None
    dead.wal.commit()  # durable in a segment, never sealed: then the process "dies"
    assert dead.wal._lock_fd is not None
    os.close(dead.wal._lock_fd)
    dead.wal._lock_fd = None
    return by_user


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }  # fmt: skip


def _recover(logs: Path) -> None:
    """Seal every dead writer's segments, as the next gateway would."""
    writer = _writer(logs, "recoverer")
    writer.start()
    writer.close()


def test_erasure_while_writers_keep_writing(tmp_path: Path) -> None:
    seeded = _seed(tmp_path)
    acknowledged: list[PredictionRecord] = []
    lock = threading.Lock()
    stop = threading.Event()
    live = _writer(tmp_path, "live", flush_rows=40, flush_interval_s=0.2, recover_orphans=False)
    live.start()

    def load(offset: int) -> None:
        i = offset
        while not stop.is_set():
            record = _record(USERS[i % len(USERS)], datetime.now(UTC), "m" if i % 3 else "n")
            live.append_sync(record, timeout=10)
            with lock:
                acknowledged.append(record)
            i += 1

    threads = [threading.Thread(target=load, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.8)
    report = erase_user(tmp_path, VICTIM, hasher=HASHER, wait_s=10)
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join()
    live.close()
    _recover(tmp_path)

    erased_at = report.erased_at
    assert not report.unsealed_left
    victim_before = [r for r in acknowledged if r.user_id == VICTIM and r.ts <= erased_at]
    victim_after = [r for r in acknowledged if r.user_id == VICTIM and r.ts > erased_at]
    assert victim_before and victim_after, "the load must write the user before and after"

    _, rows = run_query(tmp_path, "select request_id, user_id, ts from predictions")
    stored = {rid: (user, ts) for rid, user, ts in rows}
    assert len(stored) == len(rows), "no row duplicated"
    hashed_victim = HASHER(VICTIM)
    assert [r for r in rows if r[1] == hashed_victim and r[2] <= erased_at] == []
    assert all(r[1] != VICTIM for r in rows), "ids are stored hashed"
    # every other row, seeded or written during the erasure, is there; the user's later
    # requests (new data) are logged again
    others = [r for u, rs in seeded.items() if u != VICTIM for r in rs]
    others += [r for r in acknowledged if r.user_id != VICTIM]
    assert all(r.request_id in stored for r in others)
    assert all(r.request_id in stored for r in victim_after)
    assert len(rows) == len(others) + len(victim_after)
    assert all(stored[r.request_id][0] == HASHER(r.user_id) for r in others)

    # the report: seeded Parquet rows, the dead writer's segment, the live writers' rows
    seeded_victim = seeded[VICTIM]
    # (one seeded row sat in the dead segment; the live writer had sealed some of its own)
    historic = len(seeded_victim) - 1
    assert historic <= report.prediction_rows <= historic + len(victim_before)
    assert sum(c.rows_removed for c in report.wal) == 1
    assert report.live_wal_rows <= len(victim_before)
    # feedback: the user's gone, everyone else's intact
    _, fb = run_query(tmp_path, "select request_id from feedback")
    feedback_ids = {r[0] for r in fb}
    assert not feedback_ids & {r.request_id for r in seeded_victim}
    expected = {r.request_id for u, rs in seeded.items() if u != VICTIM for r in rs[:-1][::2]}
    assert feedback_ids == expected
    assert report.feedback_rows == len(seeded_victim[:-1][::2])


def test_dry_run_changes_nothing_and_reports_what_would_go(tmp_path: Path) -> None:
    seeded = _seed(tmp_path)
    before = _tree(tmp_path)
    dry = erase_user(tmp_path, VICTIM, hasher=HASHER, dry_run=True)
    assert _tree(tmp_path) == before
    assert dry.prediction_rows == len(seeded[VICTIM]) - 1 and dry.wal_rows == 1
    assert dry.feedback_rows > 0 and dry.predictions and dry.feedback

    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts")
    try:
        real = erase_user(tmp_path, VICTIM, hasher=HASHER)
        record_erasure(registry, real, actor="dpo")
        (record,) = [r for r in registry.audit_records() if r.action == "erase_user"]
        assert registry.audit_verify().ok
    finally:
        registry.close()
    assert (real.prediction_rows, real.wal_rows, real.feedback_rows) == (
        dry.prediction_rows, dry.wal_rows, dry.feedback_rows,
    )  # fmt: skip
    assert record.actor == "dpo" and record.details["prediction_rows"] == real.prediction_rows
    assert record.details["user_sha256"] == real.user_sha256
    assert {f["path"] for f in record.details["files"]} >= {c.path for c in real.predictions}
    text, hashed = str(record.details), str(HASHER(VICTIM))
    assert VICTIM not in text and hashed not in text, "the audit keeps a digest only"
    with pytest.raises(ValueError, match="dry run"):
        record_erasure(registry, dry)
    _recover(tmp_path)
    _, rows = run_query(tmp_path, f"select count(*) from predictions where user_id = '{hashed}'")
    assert rows == [(0,)]


def test_roost_erase_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestration import cli

    home = tmp_path / ".roost"
    Registry(f"sqlite:///{home / 'registry.db'}", home / "artifacts").close()
    seeded = _seed(home / "logs")
    monkeypatch.setenv("ROOST_HOME", str(home))
    monkeypatch.setenv("ROOST_USER_ID_KEY", KEY)
    cli._home.cache_clear()
    before = _tree(home / "logs")
    result = CliRunner().invoke(cli.main, ["erase", "--user", VICTIM, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"would remove {len(seeded[VICTIM])} prediction row(s)" in result.output
    assert _tree(home / "logs") == before
    result = CliRunner().invoke(cli.main, ["erase", "--user", VICTIM, "--wait", "1"])
    assert result.exit_code == 0, result.output
    assert f"removed {len(seeded[VICTIM])} prediction row(s)" in result.output
    result = CliRunner().invoke(
        cli.main, ["sql", "select (details->>'prediction_rows')::int "
                   "+ (details->>'wal_rows')::int as n from audit where action = 'erase_user'"],
    )  # fmt: skip
    assert str(len(seeded[VICTIM])) in result.output
