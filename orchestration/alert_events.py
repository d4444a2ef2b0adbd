"""Alert events: one JSON line per alert in ``$ROOST_HOME/logs/alerts/events.jsonl``.

Each line has the fields of an Alertmanager webhook alert (``status``, ``labels``,
``annotations``, ``startsAt``, ``endsAt``, ``generatorURL``, ``fingerprint``) so the monitoring
layer can forward the lines as they are; the DuckDB view ``alerts`` (:mod:`warehouse.sql`) reads
them. A ``resolved`` event carries its ``endsAt``; a firing one Go's zero time, as Alertmanager
writes it. Labels with an empty value are left out (Prometheus treats them as absent), so the
fingerprint (:func:`monitoring.alerts.evaluate.fingerprint`) of an event equals the one the
alert sensor delivers. ``source`` (optional) names the writer: the alert sensor forwards to
webhooks the events of every other writer. Lines are appended with one ``write`` of
``O_APPEND`` and fsynced, so concurrent writers never interleave within a line.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitoring.alerts.evaluate import fingerprint
from monitoring.alerts.webhook import ZERO_TIME
from warehouse.sql import ALERTS_DIR, ALERTS_FILE


def alerts_path(logs_dir: Path) -> Path:
    """Where the alert events of this logs root go."""
    return Path(logs_dir) / ALERTS_DIR / ALERTS_FILE


def emit_alert(
    logs_dir: Path,
    *,
    alertname: str,
    model: str,
    version: int | None,
    summary: str,
    description: str,
    severity: str = "critical",
    status: str = "firing",
    labels: dict[str, str] | None = None,
    starts_at: datetime | None = None,
    generator_url: str = "",
    ends_at: datetime | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Append one Alertmanager-like alert event to ``<logs_dir>/alerts/events.jsonl``.

    ``status`` is ``firing`` or ``resolved`` (then ``ends_at`` defaults to now)."""
    if status not in ("firing", "resolved"):
        raise ValueError(f"status must be 'firing' or 'resolved', got {status!r}")
    all_labels = {
        "alertname": alertname,
        "model": model,
        "version": "" if version is None else str(version),
        "severity": severity,
        **(labels or {}),
    }
    all_labels = {k: v for k, v in all_labels.items() if v != ""}
    if status == "resolved":
        ends = (ends_at or datetime.now(UTC)).isoformat()
    else:
        ends = ZERO_TIME
    event: dict[str, Any] = {
        "status": status,
        "labels": all_labels,
        "annotations": {"summary": summary, "description": description},
        "startsAt": (starts_at or datetime.now(UTC)).isoformat(),
        "endsAt": ends,
        "generatorURL": generator_url,
        "fingerprint": fingerprint(all_labels),
    }
    if source is not None:
        event["source"] = source
    path = alerts_path(logs_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(event, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return event


def read_alerts(logs_dir: Path) -> list[dict[str, Any]]:
    """Every alert event written under ``logs_dir``, oldest first."""
    path = alerts_path(logs_dir)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
