"""What the gateway enforces for governance (issue 14): protected attributes in the log,
consent-minimised logging, and data residency.

**Protected attributes** travel as request metadata, never as model inputs: a header
``roost-attr-<name>: <value>`` (``<name>``: lower-case letters, digits, ``_``; at most
:data:`MAX_ATTRIBUTES` of them, values up to 64 characters; others are ignored) is logged in the
inputs JSON under ``"attributes"`` (``{"inputs": [...], "attributes": {"age_band": "40_plus"}}``)
and never reaches the model. The fairness asset (assets/fairness.py) reads it from there. (The
log's schema is left alone; a column would have collided with the ``region`` column added at the
same time, and the inputs JSON is what monitoring already parses.)

**Logging consent.** A request from a user who withdrew ``logging`` consent
(registry/consent.py) is served as usual but logged as a *minimal* record: the same durable
record (so the caller's answer still waits for it, and availability, latency and error-rate
figures stay whole) with ``user_id`` NULL, ``inputs`` = :data:`MINIMAL_INPUTS`, ``outputs`` empty
and no attributes. Shadows of such a request are minimised the same way. Withdrawals are read
from the registry every ``ROOST_CONSENT_REFRESH_S`` seconds (default 5) per gateway by a
background task, never on a request's path; the admin API of a gateway applies its own changes
at once.

**Residency.** A model (spec ``residency.allowed_regions``, or the ``models`` of the
``ROOST_RESIDENCY_POLICY`` YAML file) or a user (the file's ``users``, keyed by the id as given
or its stored form) may be pinned to regions. A gateway whose ``ROOST_REGION`` is not allowed
answers **451 Unavailable For Legal Reasons** (RFC 7725: the refusal is a legal one, not an
authorisation failure; gRPC ``FAILED_PRECONDITION``) naming the rule, before routing, so nothing
is computed or logged. At start-up each pinned model's log location is checked too: a local
log is in the gateway's region; an object-store URL must be declared in the file's
``storage_regions`` (URL prefix -> region); a location outside the allowed regions (or of an
unknown region) makes the gateway refuse that model with 451 as well.

Roost guarantees only this: which gateway answers and logs a pinned model's requests, and
where that gateway's own log goes. It does not control where an operator copies the log or the
registry (backups, ``roost sql`` exports, replication of the registry database, which is
global), nor where callers send data.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import yaml

from registry import RoostError
from registry.tasks import cancel_and_wait

log = logging.getLogger("roost.serving")

if TYPE_CHECKING:
    from registry import Registry, RoostSettings
    from registry.consent import ConsentStore

ATTR_PREFIX = "roost-attr-"
MAX_ATTRIBUTES = 8
_ATTR_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
MINIMAL_INPUTS = '{"omitted":"logging consent withdrawn"}'


class ResidencyRefused(RoostError):
    """The gateway's region may not serve this model or user (451)."""

    status_code = 451
    grpc_code = "FAILED_PRECONDITION"


def request_attributes(headers: Mapping[str, str]) -> dict[str, str]:
    """The ``roost-attr-<name>`` headers (lower-case names) as ``{name: value}``."""
    out: dict[str, str] = {}
    for key, value in headers.items():
        if key.startswith(ATTR_PREFIX) and len(out) < MAX_ATTRIBUTES:
            name = key[len(ATTR_PREFIX):].replace("-", "_")
            if _ATTR_NAME.fullmatch(name) and 0 < len(value) <= 64:
                out[name] = value
    return out


def with_attributes(inputs: str, attributes: Mapping[str, str]) -> str:
    """``inputs`` (a JSON object's text) with ``"attributes"`` added."""
    if not attributes or not inputs.endswith("}"):
        return inputs
    extra = orjson.dumps(dict(attributes)).decode()
    return f'{inputs[:-1]},"attributes":{extra}}}' if inputs != "{}" else (
        f'{{"attributes":{extra}}}')


class ConsentGate:
    """Who withdrew ``logging``: the registry's answer, re-read every ``refresh_s`` seconds by a
    background task off the event loop (:meth:`start`), so no request waits on the registry."""

    def __init__(self, store: ConsentStore, refresh_s: float = 5.0) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._withdrawn: frozenset[str] = frozenset()
        self._stale = True  # read on first use (a gate nobody started still answers)
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None

    def invalidate(self) -> None:
        """Read the registry again on the next request (after a change through this gateway)."""
        self._stale = True

    def refresh(self) -> None:
        """Read who withdrew ``logging`` now (a small indexed read; blocking)."""
        withdrawn = self.store.withdrawn("logging")
        with self._lock:
            self._withdrawn, self._stale = withdrawn, False

    def start(self) -> None:
        """Read once, then keep the answer fresh in the background (call on the event loop)."""
        self.refresh()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._refresh_forever(), name="roost-consent-refresh"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:  # registry unreachable: keep the last answer
                log.warning("consent refresh failed (keeping the last answer): %s", exc)

    def logging_withdrawn(self, user_id: str | None) -> bool:
        if user_id is None:
            return False
        if self._stale:
            self.refresh()
        if not self._withdrawn:  # the common case: no per-request hashing of the id
            return False
        try:
            return self.store.stored(user_id) in self._withdrawn
        except RoostError:  # an id the registry would not take was never withdrawn
            return False


@dataclass
class ResidencyPolicy:
    """Which regions may serve which models and users, for the gateway in ``region``."""

    region: str
    models: dict[str, tuple[str, ...]] = field(default_factory=dict)
    users: dict[str, tuple[str, ...]] = field(default_factory=dict)
    storage_regions: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    """Models refused at start-up (their log location is outside their regions): the reason."""

    def storage_region(self, location: str) -> str | None:
        """The region of a log location: local paths are the gateway's; an object-store URL
        the longest matching ``storage_regions`` prefix's (None: unknown)."""
        if "://" not in location or location.startswith("file://"):
            return self.region
        matches = [p for p in self.storage_regions if location.startswith(p)]
        return self.storage_regions[max(matches, key=len)] if matches else None

    def check_storage(self, logs_location: str) -> None:
        """The start-up check: refuse every pinned model whose log would leave its regions."""
        where = self.storage_region(logs_location)
        for model, allowed in self.models.items():
            if where is None:
                self.refused[model] = (
                    f"model {model!r} is pinned to regions {list(allowed)} but the prediction "
                    f"log location {logs_location} has no declared region (storage_regions in "
                    "ROOST_RESIDENCY_POLICY)")
            elif where not in allowed:
                self.refused[model] = (
                    f"model {model!r} is pinned to regions {list(allowed)} but the prediction "
                    f"log location {logs_location} is in region {where!r}")

    def admit(self, model: str, user_id: str | None, stored: str | None) -> None:
        allowed = self.models.get(model)
        if allowed is not None and self.region not in allowed:
            raise ResidencyRefused(
                f"residency: model {model!r} may only be served in regions {list(allowed)}; "
                f"this gateway is in region {self.region!r} (ROOST_REGION)")
        if model in self.refused:
            raise ResidencyRefused(f"residency: {self.refused[model]}; refusing to serve it")
        for key in (user_id, stored):
            pinned = self.users.get(key) if key is not None else None
            if pinned is not None and self.region not in pinned:
                raise ResidencyRefused(
                    f"residency: this user's requests may only be served in regions "
                    f"{list(pinned)}; this gateway is in region {self.region!r} (ROOST_REGION)")


def _regions(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, dict):
        value = value.get("allowed_regions")
    if not isinstance(value, list) or not value or not all(isinstance(r, str) for r in value):
        raise ValueError(f"{where}: expected allowed_regions, a non-empty list of region names")
    return tuple(value)


def load_policy(region: str, path: Path | None, specs_dir: Path | None) -> ResidencyPolicy:
    """The policy of the ``ROOST_RESIDENCY_POLICY`` file plus the specs' ``residency`` blocks
    (read as plain YAML: the gateway does not import the Dagster side)."""
    policy = ResidencyPolicy(region)
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"ROOST_RESIDENCY_POLICY {path}: cannot read: {exc}") from None
        if not isinstance(raw, dict) or set(raw) - {"models", "users", "storage_regions"}:
            raise ValueError(f"ROOST_RESIDENCY_POLICY {path}: expected a mapping with models, "
                             "users and storage_regions")
        for section, target in (("models", policy.models), ("users", policy.users)):
            for name, value in (raw.get(section) or {}).items():
                target[str(name)] = _regions(value, f"{path}: {section}.{name}")
        for prefix, where in (raw.get("storage_regions") or {}).items():
            if not isinstance(where, str):
                raise ValueError(f"{path}: storage_regions.{prefix}: expected a region name")
            policy.storage_regions[str(prefix)] = where
    if specs_dir is not None and specs_dir.is_dir():
        for spec in sorted(specs_dir.glob("*.yaml")):
            with_spec = yaml.safe_load(spec.read_text()) or {}
            block = with_spec.get("residency") if isinstance(with_spec, dict) else None
            if block is not None:
                name = str(with_spec.get("name", spec.stem))
                policy.models.setdefault(name, _regions(block, f"{spec}: residency"))
    return policy


@dataclass
class Governance:
    """The data plane's governance hooks (:func:`install` attaches one)."""

    consent: ConsentGate | None = None
    residency: ResidencyPolicy | None = None
    hasher: Any = None

    def admit(self, model: str, user_id: str | None) -> None:
        """Raise :class:`ResidencyRefused` when this gateway may not serve the request."""
        if self.residency is not None:
            stored = self.hasher(user_id) if self.hasher is not None else None
            self.residency.admit(model, user_id, stored)

    def for_log(self, user_id: str | None, headers: Mapping[str, str], inputs: str,
                outputs: str) -> tuple[str | None, str, str]:
        """(user_id, inputs, outputs) as the log may keep them."""
        if self.consent is not None and self.consent.logging_withdrawn(user_id):
            return None, MINIMAL_INPUTS, ""
        return user_id, with_attributes(inputs, request_attributes(headers)), outputs


def install(plane: Any, settings: RoostSettings, registry: Registry) -> Governance:
    """Build the gateway's :class:`Governance` and hand it to the data plane and recorder."""
    from registry.consent import ConsentStore
    from registry.storage import logs_location
    from warehouse.minimise import UserIdHasher

    hasher = UserIdHasher.from_settings(settings, warn=False)
    store = ConsentStore(registry, hasher)
    policy = load_policy(getattr(settings, "region", "local"), settings.residency_policy,
                         settings.home / "models")
    policy.check_storage(logs_location(settings).url)
    governance = Governance(ConsentGate(store, settings.consent_refresh_s),
                            policy if policy.models or policy.users else None, hasher)
    plane.governance = governance
    plane.recorder.governance = governance
    if governance.consent is not None:
        governance.consent.start()
    return governance
