"""Tamper-evident audit trail: each record hashes its content together with the previous hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Text, select, type_coerce
from sqlalchemy.orm import Session

from registry.tables import AuditRow

GENESIS = "0" * 64


def record_hash(
    prev_hash: str,
    ts: str,
    actor: str,
    action: str,
    model: str | None,
    version: int | None,
    details: dict[str, Any],
) -> str:
    body = json.dumps(
        [prev_hash, ts, actor, action, model, version, details],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    id: int
    ts: str
    actor: str
    action: str
    model: str | None
    version: int | None
    details: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def from_row(cls, row: AuditRow) -> AuditRecord:
        return cls(
            row.id,
            row.ts,
            row.actor,
            row.action,
            row.model,
            row.version,
            dict(row.details),
            row.prev_hash,
            row.hash,
        )


@dataclass(frozen=True)
class AuditVerification:
    """Result of walking the chain: ``ok`` or the first record that does not check out."""

    checked: int
    ok: bool
    first_bad_id: int | None = None
    reason: str = ""


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    model: str | None = None,
    version: int | None = None,
    details: dict[str, Any] | None = None,
) -> AuditRow:
    """Append one record inside the caller's transaction (which holds the write lock)."""
    last = session.execute(
        select(AuditRow.hash).order_by(AuditRow.id.desc()).limit(1).with_for_update()
    ).scalar_one_or_none()
    prev = last or GENESIS
    ts = datetime.now(UTC).isoformat(timespec="microseconds")
    clean = json.loads(json.dumps(details or {}, default=str))
    row = AuditRow(
        ts=ts,
        actor=actor,
        action=action,
        model=model,
        version=version,
        details=clean,
        prev_hash=prev,
        hash=record_hash(prev, ts, actor, action, model, version, clean),
    )
    session.add(row)
    session.flush()
    return row


def verify(session: Session) -> AuditVerification:
    """Walk the chain in id order; report the first record whose hash or link is wrong."""
    prev = GENESIS
    checked = 0
    # Read details as text: a record whose JSON was mangled must be reported, not crash us.
    rows = session.execute(
        select(
            AuditRow.id,
            AuditRow.ts,
            AuditRow.actor,
            AuditRow.action,
            AuditRow.model,
            AuditRow.version,
            type_coerce(AuditRow.details, Text),
            AuditRow.prev_hash,
            AuditRow.hash,
        ).order_by(AuditRow.id)
    )
    for row_id, ts, actor, action, model, version, details_text, prev_hash, digest in rows:
        checked += 1
        if prev_hash != prev:
            return AuditVerification(
                checked,
                False,
                row_id,
                f"record {row_id} does not link to the record before it "
                "(a record was removed or reordered)",
            )
        try:  # psycopg (PostgreSQL) hands json columns back parsed
            details = (
                details_text
                if isinstance(details_text, dict)
                else json.loads(details_text) if details_text is not None else None
            )
        except ValueError:
            details = None
        if not isinstance(details, dict) or digest != record_hash(
            prev_hash, ts, actor, action, model, version, details
        ):
            return AuditVerification(
                checked, False, row_id, f"record {row_id} was modified: its content hash differs"
            )
        prev = digest
    return AuditVerification(checked, True)
