"""Alertmanager's webhook JSON (version 4), and posting it with retries.

A message (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config)::

    {"version": "4", "groupKey": "{}:{alertname=\\"X\\"}", "truncatedAlerts": 0,
     "status": "firing" | "resolved", "receiver": "<name>", "groupLabels": {...},
     "commonLabels": {...}, "commonAnnotations": {...}, "externalURL": "...",
     "alerts": [{"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL",
                 "fingerprint"}]}

``status`` is ``firing`` while any alert of the message fires. A firing alert's ``endsAt`` is
Go's zero time (``0001-01-01T00:00:00Z``), as Alertmanager sends it.

:func:`post` tries up to ``attempts`` times, sleeping ``backoff * 2**k`` (capped) between
tries; connection errors, timeouts, 408, 429 and 5xx are retried, any other status is a
permanent failure (retrying would not help).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from monitoring.alerts.config import Receiver, RetryPolicy

ZERO_TIME = "0001-01-01T00:00:00Z"
RETRYABLE = frozenset({408, 429})


def _common(dicts: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """The key/value pairs every mapping shares."""
    if not dicts:
        return {}
    first = dict(dicts[0])
    return {k: v for k, v in sorted(first.items()) if all(d.get(k) == v for d in dicts[1:])}


def group_key(group_labels: Mapping[str, str]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(group_labels.items()))
    return "{}:{" + inner + "}"


def message(receiver: str, alerts: Sequence[dict[str, Any]], external_url: str = "",
            group_by: Sequence[str] = ("alertname",)) -> dict[str, Any]:
    """The webhook body for ``alerts`` (Alertmanager alert dicts) sent to ``receiver``."""
    ordered = sorted(alerts, key=lambda a: (a["status"] != "firing", a["fingerprint"]))
    labels = [a["labels"] for a in ordered]
    common = _common(labels)
    group_labels = {k: common[k] for k in group_by if k in common}
    return {
        "version": "4",
        "groupKey": group_key(group_labels),
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in ordered) else "resolved",
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common,
        "commonAnnotations": _common([a["annotations"] for a in ordered]),
        "externalURL": external_url,
        "alerts": ordered,
    }


@dataclass(frozen=True)
class Delivery:
    """How posting one message went."""

    ok: bool
    attempts: int
    status_code: int | None
    error: str
    retryable: bool
    """Whether a later retry (the outbox) could succeed."""


def post(receiver: Receiver, body: Mapping[str, Any], retry: RetryPolicy,
         sleep: Callable[[float], None] = time.sleep) -> Delivery:
    """POST ``body`` to the receiver, retrying with exponential backoff."""
    headers = {"Content-Type": "application/json", **receiver.headers}
    code: int | None = None
    error = ""
    with httpx.Client(timeout=receiver.timeout_s) as client:
        for attempt in range(retry.attempts):
            if attempt:
                sleep(retry.delay(attempt - 1))
            try:
                response = client.post(receiver.url, json=dict(body), headers=headers)
            except httpx.HTTPError as exc:
                code, error = None, f"{type(exc).__name__}: {exc}"
                continue
            code = response.status_code
            if 200 <= code < 300:
                return Delivery(True, attempt + 1, code, "", False)
            error = f"HTTP {code}: {response.text[:200]}"
            if code < 500 and code not in RETRYABLE:
                return Delivery(False, attempt + 1, code, error, False)
    return Delivery(False, retry.attempts, code, error, True)
