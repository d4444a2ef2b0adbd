"""Consent tracking: per user and purpose, granted or withdrawn, with timestamps, audited.

Purposes (:data:`PURPOSES`):

- ``logging``: the prediction log may keep the user's inputs and outputs. Withdrawn, the
  gateway still answers but logs a *minimal* record (request id, time, model, version, status,
  latency, protocol, route, region; no user id, no inputs, no outputs, no attributes), so
  availability, latency and error-rate figures stay whole (serving/governance.py);
- ``training``: the user's logged data may be used to train or evaluate models. Withdrawn, the
  readers that turn logged traffic into data (the staging replay, assets/staging.py) skip the
  user's rows (:func:`training_filter`);
- ``personalization``: recorded for the operator's own use (Roost has no personalised routing
  that reads it).

**Default: granted.** A user without a record has not withdrawn anything (an opt-out model:
logging and replay rest on the operator's legitimate interest or contract). An operator that
needs opt-in consent records ``grant`` at sign-up and treats "no record" as refusal in its own
client; Roost does not enforce opt-in.

Users are stored in the form the prediction log stores them (:class:`~warehouse.minimise.
UserIdHasher`: the ``ROOST_USER_ID_KEY`` HMAC, or the id as given without a key), so the raw
id never reaches the registry when a key is set. Every change appends ``consent_grant`` /
``consent_withdraw`` to the hash-chained audit trail with ``sha256(stored id)`` (as erasure's
tombstones do), the purpose and the time — never the id. The current state is the ``consent``
table; its history is the audit trail.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from registry import audit
from registry.errors import InvalidRequest
from registry.tables import ConsentRow, utcnow

if TYPE_CHECKING:
    from registry.service import Registry

PURPOSES = ("logging", "training", "personalization")


def check_purpose(purpose: str) -> str:
    if purpose not in PURPOSES:
        raise InvalidRequest(f"purpose: {purpose!r} is not one of {', '.join(PURPOSES)}")
    return purpose


def user_digest(stored: str) -> str:
    """What the audit trail names a user by: sha256 of the stored form (not reversible)."""
    return hashlib.sha256(stored.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ConsentRecord:
    purpose: str
    granted: bool
    updated_at: datetime | None
    """None: no record, the default (granted)."""
    actor: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "purpose": self.purpose,
            "granted": self.granted,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "recorded": self.updated_at is not None,
            "actor": self.actor,
        }


class ConsentStore:
    """Consent records on a registry's transactions; ``hasher`` turns an id into its stored
    form (:class:`warehouse.minimise.UserIdHasher`)."""

    def __init__(self, registry: Registry, hasher: Callable[[str | None], str | None]) -> None:
        self._registry = registry
        self._hasher = hasher

    def stored(self, user: str) -> str:
        if not isinstance(user, str) or not user.strip():
            raise InvalidRequest("user: expected a non-empty user id")
        if len(user) > 256:
            raise InvalidRequest("user: at most 256 characters")
        stored = self._hasher(user)
        assert stored is not None
        return stored

    def set(self, user: str, purposes: Iterable[str], granted: bool, *,
            actor: str | None = None) -> list[ConsentRecord]:
        """Grant or withdraw ``purposes`` for ``user`` (one transaction, one audit record
        per purpose whose state changed or had no record)."""
        names = [check_purpose(p) for p in purposes]
        if not names:
            raise InvalidRequest("purpose: name at least one of " + ", ".join(PURPOSES))
        stored = self.stored(user)
        who = actor or self._registry.default_actor
        out: list[ConsentRecord] = []
        with self._registry._write() as session:
            for purpose in names:
                row = session.get(ConsentRow, (stored, purpose))
                now = utcnow()
                if row is None:
                    row = ConsentRow(user=stored, purpose=purpose, granted=granted,
                                     updated_at=now, actor=who)
                    session.add(row)
                elif row.granted != granted:
                    row.granted, row.updated_at, row.actor = granted, now, who
                else:  # unchanged: no new record
                    out.append(ConsentRecord(purpose, row.granted, row.updated_at, row.actor))
                    continue
                audit.append(
                    session, actor=who,
                    action="consent_grant" if granted else "consent_withdraw",
                    details={"user_sha256": user_digest(stored), "purpose": purpose,
                             "at": now.isoformat()},
                )
                out.append(ConsentRecord(purpose, granted, now, who))
        return out

    def get(self, user: str) -> list[ConsentRecord]:
        """Every purpose's state for ``user`` (defaults shown as granted, not recorded)."""
        stored = self.stored(user)
        with self._registry._read() as session:
            rows = {r.purpose: r for r in session.execute(
                select(ConsentRow).where(ConsentRow.user == stored)).scalars()}
        return [ConsentRecord(p, rows[p].granted, rows[p].updated_at, rows[p].actor)
                if p in rows else ConsentRecord(p, True, None) for p in PURPOSES]

    def withdrawn(self, purpose: str) -> frozenset[str]:
        """Stored ids of every user who withdrew ``purpose``."""
        check_purpose(purpose)
        with self._registry._read() as session:
            users = session.execute(select(ConsentRow.user).where(
                ConsentRow.purpose == purpose, ConsentRow.granted.is_(False))).scalars()
            return frozenset(users)


def training_filter(store: ConsentStore) -> Callable[[str | None], bool]:
    """A predicate on logged ``user_id`` values: True when the row may be used for training
    (anonymous rows and users who did not withdraw ``training``)."""
    excluded = store.withdrawn("training")
    return lambda user_id: user_id is None or user_id not in excluded
