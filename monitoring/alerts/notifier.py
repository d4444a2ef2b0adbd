"""The alert lifecycle and its delivery: pending -> firing -> resolved, deduplicated, retried.

:class:`Notifier` keeps its state in one JSON file (``$ROOST_HOME/alerting/state.json``,
written atomically), so a restarted daemon neither re-sends nor loses anything:

* ``active``: every alert whose rule currently holds, by fingerprint: when it started to hold
  (``pendingSince``), whether it fires yet (after the rule's ``for``), ``startsAt``, and when it
  was last sent to each receiver.
* ``outbox``: messages not delivered yet, retried every tick (with exponential backoff between
  ticks too) until delivered, refused for good (4xx), or older than ``retry.outbox_ttl``.
* ``eventsOffset`` / ``external``: how far ``events.jsonl`` was read, and when each external
  alert (the canary sensor's ``CanaryRollback``...) was last forwarded.

Delivery semantics, per receiver (receivers only get alerts whose ``severity`` they route):
a firing alert is sent once when it starts firing, then again each ``repeat_interval`` while it
fires; when its rule stops holding it is sent once more as ``resolved`` with ``endsAt`` (only
to receivers that got it firing, and that ``send_resolved``). A message that fails is kept in
the outbox, not re-generated, so the alert still arrives exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from monitoring.alerts.config import AlertConfig, Receiver
from monitoring.alerts.evaluate import AlertState
from monitoring.alerts.webhook import ZERO_TIME, message, post

log = logging.getLogger(__name__)
STATE_FILE = "state.json"
RULES_SOURCE = "alert_rules"
"""The ``source`` of events this module's transitions write; never forwarded again."""


def _iso(at: datetime) -> str:
    return at.isoformat()


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@dataclass(frozen=True)
class Transition:
    """An alert that started firing or resolved in this tick."""

    status: str
    """``firing`` or ``resolved``."""
    alert: dict[str, Any]
    """The Alertmanager alert dict (``labels``, ``annotations``, ``startsAt``, ``endsAt``...)."""


@dataclass
class TickReport:
    transitions: list[Transition] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    """``receiver: groupKey (n alerts)`` per message delivered."""
    failed: list[str] = field(default_factory=list)
    queued: int = 0
    """Messages left in the outbox."""

    def summary(self) -> str:
        parts = [f"{t.status} {t.alert['labels'].get('alertname')}"
                 f"{'/' + t.alert['labels']['model'] if 'model' in t.alert['labels'] else ''}"
                 for t in self.transitions]
        parts += [f"delivered to {d}" for d in self.delivered]
        parts += [f"failed: {f}" for f in self.failed]
        if self.queued:
            parts.append(f"{self.queued} message(s) in the outbox")
        return "; ".join(parts)


def read_new_events(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines of ``path`` after byte ``offset`` (from 0 if the file shrank)."""
    if not path.is_file():
        return [], 0
    size = path.stat().st_size
    if size < offset:
        offset = 0
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next tick
    events = []
    for line in data[:end].splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            log.warning("skipping a line of %s that is not JSON", path)
            continue
        if isinstance(event, dict) and isinstance(event.get("labels"), dict):
            events.append(event)
    return events, offset + end


def _stale(event: dict[str, Any], cutoff: datetime) -> bool:
    """Whether an event started before ``cutoff`` (old news on a first read of the file)."""
    try:
        return _at(str(event.get("startsAt", ""))) < cutoff
    except ValueError:
        return False


class Notifier:
    """Tracks alert states and delivers them to the configured receivers."""

    def __init__(self, config: AlertConfig, state_dir: Path, *,
                 sleep: Callable[[float], None] = time.sleep,
                 generator_url: str = "") -> None:
        self.config = config
        self.path = Path(state_dir) / STATE_FILE
        self.sleep = sleep
        self.generator_url = generator_url
        self.state = self._load()

    def _load(self) -> dict[str, Any]:
        empty: dict[str, Any] = {"active": {}, "outbox": [], "eventsOffset": 0, "external": {}}
        if not self.path.is_file():
            return empty
        try:
            loaded = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            log.error("alert state %s is unreadable (%s): starting afresh", self.path, exc)
            return empty
        return {**empty, **loaded} if isinstance(loaded, dict) else empty

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.state, sort_keys=True, indent=1))
        os.replace(tmp, self.path)

    @property
    def outbox(self) -> list[dict[str, Any]]:
        return list(self.state["outbox"])

    # -- the lifecycle --------------------------------------------------------------------------

    def _alert(self, entry: dict[str, Any], status: str,
               ends_at: str = ZERO_TIME) -> dict[str, Any]:
        return {"status": status, "labels": entry["labels"], "annotations": entry["annotations"],
                "startsAt": entry["startsAt"], "endsAt": ends_at,
                "generatorURL": self.generator_url, "fingerprint": entry["fingerprint"]}

    def observe(self, states: Iterable[AlertState], now: datetime) -> list[Transition]:
        """Fold this tick's rule states into ``active``; return who started firing/resolved."""
        active: dict[str, dict[str, Any]] = self.state["active"]
        seen: set[str] = set()
        transitions: list[Transition] = []
        for st in states:
            fp = st.fingerprint
            seen.add(fp)
            entry = active.get(fp)
            if not st.firing:
                if entry is not None:
                    del active[fp]
                    if entry["firing"]:
                        transitions.append(self._resolve(entry, st.annotations, now))
                continue
            if entry is None:
                entry = active[fp] = {"labels": st.labels, "fingerprint": fp, "firing": False,
                                      "pendingSince": _iso(now), "startsAt": _iso(now),
                                      "sent": {}}
            entry["annotations"] = st.annotations
            held = (now - _at(entry["pendingSince"])).total_seconds()
            if not entry["firing"] and held >= st.for_s:
                entry["firing"], entry["startsAt"] = True, _iso(now)
                transitions.append(Transition("firing", self._alert(entry, "firing")))
        for fp in [fp for fp in active if fp not in seen]:  # its rule or subject is gone
            entry = active.pop(fp)
            if entry["firing"]:
                transitions.append(self._resolve(entry, entry["annotations"], now))
        return transitions

    def _resolve(self, entry: dict[str, Any], annotations: dict[str, str],
                 now: datetime) -> Transition:
        entry = {**entry, "annotations": annotations}
        alert = self._alert(entry, "resolved", _iso(now))
        for receiver in self.config.receivers:
            if receiver.send_resolved and receiver.name in entry["sent"]:
                self._queue(receiver, [alert], now)
        return Transition("resolved", alert)

    def _queue(self, receiver: Receiver, alerts: Sequence[dict[str, Any]], now: datetime) -> None:
        by_name: dict[str, list[dict[str, Any]]] = {}
        for alert in alerts:
            by_name.setdefault(alert["labels"].get("alertname", ""), []).append(alert)
        for group in by_name.values():
            self.state["outbox"].append({
                "id": uuid.uuid4().hex, "receiver": receiver.name, "attempts": 0,
                "createdAt": _iso(now), "nextAt": _iso(now),
                "body": message(receiver.name, group, self.config.external_url),
            })

    def _due_firing(self, now: datetime) -> None:
        """Queue every firing alert a receiver has not had, or not for ``repeat_interval``."""
        repeat = timedelta(seconds=self.config.repeat_interval_s)
        for receiver in self.config.receivers:
            due = []
            for entry in self.state["active"].values():
                if not entry["firing"] or not receiver.wants(entry["labels"].get("severity", "")):
                    continue
                last = entry["sent"].get(receiver.name)
                if last is None or now - _at(last) >= repeat:
                    entry["sent"][receiver.name] = _iso(now)
                    due.append(self._alert(entry, "firing"))
            if due:
                self._queue(receiver, due, now)

    def forward(self, events: Iterable[dict[str, Any]], now: datetime) -> int:
        """Queue alert events written by others (``source`` not ours); deduplicated by
        fingerprint and status within ``repeat_interval``. Returns how many were queued."""
        external: dict[str, str] = self.state["external"]
        repeat = timedelta(seconds=self.config.repeat_interval_s)
        queued = 0
        for event in events:
            if event.get("source") == RULES_SOURCE or _stale(event, now - repeat):
                continue
            alert = {k: event.get(k, "") for k in ("status", "labels", "annotations", "startsAt",
                                                   "endsAt", "generatorURL", "fingerprint")}
            alert["status"] = "resolved" if alert["status"] == "resolved" else "firing"
            key = f"{alert['fingerprint']}/{alert['status']}"
            last = external.get(key)
            if last is not None and now - _at(last) < repeat:
                continue
            external[key] = _iso(now)
            for receiver in self.config.receivers:
                if receiver.wants(str(alert["labels"].get("severity", ""))):
                    self._queue(receiver, [alert], now)
            queued += 1
        cutoff = now - repeat
        self.state["external"] = {k: v for k, v in external.items() if _at(v) >= cutoff}
        return queued

    # -- delivery -------------------------------------------------------------------------------

    def flush(self, now: datetime, report: TickReport) -> None:
        """Post every due outbox message; keep what failed for a retry on a later tick."""
        receivers = {r.name: r for r in self.config.receivers}
        retry = self.config.retry
        kept: list[dict[str, Any]] = []
        for item in self.state["outbox"]:
            receiver = receivers.get(item["receiver"])
            label = f"{item['receiver']}: {item['body']['groupKey']} " \
                    f"({len(item['body']['alerts'])} alerts)"
            age = (now - _at(item["createdAt"])).total_seconds()
            if receiver is None or age > retry.outbox_ttl_s:
                log.error("dropping undeliverable alert message %s", label)
                report.failed.append(f"{label} dropped")
                continue
            if _at(item["nextAt"]) > now:
                kept.append(item)
                continue
            result = post(receiver, item["body"], retry, self.sleep)
            item["attempts"] += result.attempts
            if result.ok:
                report.delivered.append(label)
                continue
            report.failed.append(f"{label}: {result.error}")
            if not result.retryable:
                log.error("receiver %s refused %s: %s", receiver.name, label, result.error)
                continue
            rounds = item["attempts"] // retry.attempts
            item["nextAt"] = _iso(now + timedelta(seconds=retry.delay(rounds)))
            kept.append(item)
        self.state["outbox"] = kept
        report.queued = len(kept)

    def tick(self, states: Sequence[AlertState], now: datetime,
             events_file: Path | None = None) -> TickReport:
        """One evaluation's worth: fold ``states``, forward the new lines of ``events_file``
        (``events.jsonl``), deliver, save."""
        report = TickReport(transitions=self.observe(states, now))
        if events_file is not None:
            events, self.state["eventsOffset"] = read_new_events(
                events_file, int(self.state["eventsOffset"]))
            self.forward(events, now)
        self._due_firing(now)
        try:
            self.flush(now, report)
        finally:
            self.save()
        return report
