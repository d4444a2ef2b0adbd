"""Data minimisation: what the prediction log never stores.

**User ids** are stored pseudonymised: ``HMAC-SHA256(ROOST_USER_ID_KEY, user_id)`` as 64 hex
digits. :class:`~warehouse.writer.PredictionLogWriter` applies it once, when it takes a record
(before the WAL), so every transport (REST, gRPC, shadows, failures) is covered and no raw id
reaches a segment or a Parquet file. The same id always gives the same digest, so analyses
that count users, sticky experiments and erasure (``roost erase --user ID`` hashes ``ID`` with
the same key) keep working; without the key nobody can recompute a digest from an id, and a
digest cannot be turned back into the id. Rotating the key splits every user in two (old rows
keep the old digest); erasure matches the raw id too, for rows logged before a key was set.

Without ``ROOST_USER_ID_KEY`` ids are stored **as given** and the writer logs a warning once
(``dev_mode`` or not: refusing to start would break every existing deployment, and a log of
raw ids is what they had). Set the key in production.

Feedback rows carry no user id (they name the ``request_id`` they label); erasure removes a
user's feedback through the request ids of the user's predictions.

**Inputs** a model must never log are named in its version config, ``log_exclude`` (a list of
input names or one comma-separated string, e.g. ``roost config fraud 3 --set
log_exclude='["ssn","email"]'``); the data plane passes them to
:func:`serving.protocol.render.render_inputs` (``exclude=``), which writes ``"[excluded]"`` in
place of the tensor's data (name, datatype and shape stay) and of an online feature's value.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from registry.errors import InvalidRequest

if TYPE_CHECKING:
    from registry.settings import RoostSettings

logger = logging.getLogger(__name__)

EXCLUDED = "[excluded]"
"""What the log shows instead of an excluded input's data."""
LOG_EXCLUDE_KNOB = "log_exclude"
"""Version-config key listing the inputs (and features) never logged."""
USER_ID_KEY_ENV = "ROOST_USER_ID_KEY"


def log_exclude_of(config: Mapping[str, Any] | None) -> frozenset[str]:
    """The input names a version's config excludes from the log (empty when unset)."""
    raw = (config or {}).get(LOG_EXCLUDE_KNOB)
    if raw is None:
        return frozenset()
    if isinstance(raw, str):
        names = [n.strip() for n in raw.split(",")]
    elif isinstance(raw, list | tuple) and all(isinstance(n, str) for n in raw):
        names = [n.strip() for n in raw]
    else:
        raise InvalidRequest(
            f"{LOG_EXCLUDE_KNOB}: expected a list of input names or a comma-separated string, "
            f"got {raw!r}"
        )
    return frozenset(n for n in names if n)


class UserIdHasher:
    """Turns a user id into the form the log stores: its keyed hash, or itself without a key."""

    def __init__(self, key: bytes | str | None) -> None:
        if isinstance(key, str):
            key = key.encode("utf-8")
        self._key = key or None

    @classmethod
    def from_settings(cls, settings: RoostSettings, *, warn: bool = True) -> UserIdHasher:
        secret = settings.user_id_key
        hasher = cls(secret.get_secret_value() if secret is not None else None)
        if warn and not hasher.keyed:
            logger.warning(
                "prediction log: %s is not set: user ids are stored as given (set it to store "
                "them as keyed hashes; see warehouse/minimise.py)",
                USER_ID_KEY_ENV,
            )
        return hasher

    @property
    def keyed(self) -> bool:
        return self._key is not None

    def __call__(self, user_id: str | None) -> str | None:
        if user_id is None or self._key is None:
            return user_id
        return hmac.new(self._key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()

    def stored_forms(self, user_id: str) -> list[str]:
        """Every form ``user_id`` may be stored under: the keyed hash (if keyed) and the id."""
        stored = self(user_id)
        return [stored, user_id] if stored is not None and stored != user_id else [user_id]
