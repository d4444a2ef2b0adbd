"""Alert events: one JSON line per alert in ``$ROOST_HOME/logs/alerts/events.jsonl``.

Each line has the fields of an Alertmanager webhook alert (``status``, ``labels``,
``annotations``, ``startsAt``, ``endsAt``, ``generatorURL``, ``fingerprint``) so the monitoring
layer can forward the lines as they are; the DuckDB view ``alerts`` (:mod:`warehouse.sql`) reads
them. Lines are appended with one ``write`` of ``O_APPEND`` and fsynced, so concurrent writers
never interleave within a line.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
) -> dict[str, Any]:
    """Append one Alertmanager-like alert event to ``<logs_dir>/alerts/events.jsonl``."""
    all_labels = {
        "alertname": alertname,
        "model": model,
        "version": "" if version is None else str(version),
        "severity": severity,
        **(labels or {}),
    }
    fingerprint = hashlib.sha256(
        json.dumps(all_labels, sort_keys=True).encode()
    ).hexdigest()[:16]
    event: dict[str, Any] = {
        "status": status,
        "labels": all_labels,
        "annotations": {"summary": summary, "description": description},
        "startsAt": (starts_at or datetime.now(UTC)).isoformat(),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": generator_url,
        "fingerprint": fingerprint,
    }
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
