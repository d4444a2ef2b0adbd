"""The alert sensor: every tick, evaluates the alert rules on the logs and delivers to webhooks.

Each tick (``ROOST_ALERT_TICK_S``) the sensor

1. loads the rules and receivers (:func:`monitoring.alerts.config.rules_path`:
   ``ROOST_ALERT_RULES``, else ``$ROOST_HOME/alerts.yaml``, else the shipped defaults);
2. evaluates them on the prediction log, feedback, drift scores and the registry
   (:class:`monitoring.alerts.logsource.LogSource`, :func:`monitoring.alerts.evaluate.evaluate`);
3. hands the states to the :class:`~monitoring.alerts.notifier.Notifier` (state and outbox in
   ``$ROOST_HOME/alerting/``), which also forwards new events others wrote to ``events.jsonl``
   (the canary sensor's ``CanaryRollback``), deduplicates, retries and resolves;
4. appends every alert that started firing or resolved to ``events.jsonl``
   (:func:`orchestration.alert_events.emit_alert`), so the DuckDB view ``alerts`` shows it.

The cursor ``{"at": iso, "firing": [alertname/model...]}`` records the last tick's firing
alerts, for the UI; the state that matters lives in the notifier's file.
"""

# Dagster reads these annotations at definition time: no `from __future__ import annotations`.
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from dagster import (
    DefaultSensorStatus,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from assets.resources import RegistryResource
from monitoring.alerts.config import load_config, rules_path
from monitoring.alerts.evaluate import AlertState, evaluate
from monitoring.alerts.logsource import LogSource
from monitoring.alerts.notifier import RULES_SOURCE, Notifier, TickReport, Transition
from orchestration.alert_events import alerts_path, emit_alert
from registry import Registry, RoostSettings
from registry.storage import logs_location

ALERT_SENSOR = "alert_sensor"
STATE_DIR = "alerting"
"""Under ``$ROOST_HOME``: the notifier's state and outbox (``state.json``)."""
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def record_transition(logs_dir: Path, transition: Transition) -> None:
    """One alert that started firing or resolved, as an event in ``events.jsonl``."""
    alert = transition.alert
    labels = dict(alert["labels"])
    ends = alert["endsAt"] if transition.status == "resolved" else None
    emit_alert(
        logs_dir, alertname=labels.pop("alertname"), model=labels.pop("model", ""),
        version=None, severity=labels.pop("severity", ""), labels=labels,
        summary=alert["annotations"].get("summary", ""),
        description=alert["annotations"].get("description", ""),
        status=transition.status, starts_at=datetime.fromisoformat(alert["startsAt"]),
        ends_at=datetime.fromisoformat(ends) if ends else None,
        generator_url=alert.get("generatorURL", ""), source=RULES_SOURCE,
    )


def alert_tick(settings: RoostSettings, now: datetime, *, rules_file: Path | None = None,
               sleep: Callable[[float], None] = time.sleep,
               generator_url: str = "") -> tuple[list[AlertState], TickReport]:
    """Evaluate, deliver and record once; the states evaluated and what happened."""
    config = load_config(rules_path(settings.home, rules_file or settings.alert_rules))
    logs_dir = settings.logs_dir
    reg = Registry.from_settings(settings)
    try:
        with LogSource(logs_dir, reg, logs_location=logs_location(settings)) as source:
            states = evaluate(config.rules, source, now)
    finally:
        reg.close()
    notifier = Notifier(config, settings.home / STATE_DIR, sleep=sleep,
                        generator_url=generator_url)
    report = notifier.tick(states, now, events_file=alerts_path(logs_dir))
    for transition in report.transitions:
        record_transition(logs_dir, transition)
    return states, report


def make_alert_sensor(
    *,
    interval_s: int | None = None,
    clock: Clock | None = None,
    rules_file: Path | None = None,
    sleep: Callable[[float], None] = time.sleep,
    name: str = ALERT_SENSOR,
) -> SensorDefinition:
    """The sensor that evaluates the alert rules and delivers alerts to the receivers."""
    now_of = clock or _utcnow

    @sensor(name=name, minimum_interval_seconds=interval_s or RoostSettings().alert_tick_s,
            default_status=DefaultSensorStatus.RUNNING,
            description="Evaluates the alert rules (latency, errors, SLO burn rate, drift, "
                        "accuracy, freshness) and delivers alerts to webhooks.")
    def alerts(context: SensorEvaluationContext, registry: RegistryResource) -> SensorResult:
        now = now_of()
        states, report = alert_tick(registry.settings(), now, rules_file=rules_file,
                                    sleep=sleep)
        for transition in report.transitions:
            context.log.info(f"{transition.status}: {transition.alert['annotations']['summary']}")
        for failure in report.failed:
            context.log.warning(f"alert delivery failed: {failure}")
        firing = sorted("/".join(v for v in (s.rule, s.labels.get("model")) if v)
                        for s in states if s.firing)
        cursor = json.dumps({"at": now.isoformat(), "firing": firing}, sort_keys=True)
        reason = report.summary() or (f"firing: {', '.join(firing)}" if firing
                                      else f"{len(states)} alert states, none firing")
        return SensorResult(skip_reason=reason, cursor=cursor)

    return alerts
