"""Alerts: rules in YAML, evaluated on the prediction log, delivered to webhooks.

* :mod:`~monitoring.alerts.config`: the rule and receiver file (pydantic-validated);
* :mod:`~monitoring.alerts.source`: what rules read (:class:`MetricSource`), and
  :class:`MetricHistory`, a synthetic source; :mod:`~monitoring.alerts.logsource` the real one;
* :mod:`~monitoring.alerts.evaluate`: ``evaluate(rules, source, now) -> list[AlertState]``,
  SLO burn rates included;
* :mod:`~monitoring.alerts.notifier` and :mod:`~monitoring.alerts.webhook`: pending, firing,
  resolved; Alertmanager webhook JSON, deduplication, retries, the outbox;
* :mod:`~monitoring.alerts.prometheus`: the same rules as a Prometheus rule file.

The Dagster sensor that runs all this is :mod:`orchestration.alert_sensor`.
"""

from monitoring.alerts.config import (
    AlertConfig,
    AlertConfigError,
    Receiver,
    Rule,
    load_config,
    parse_config,
    rules_path,
)
from monitoring.alerts.evaluate import AlertState, burn_rate, evaluate, fingerprint
from monitoring.alerts.notifier import Notifier, TickReport, Transition
from monitoring.alerts.source import MetricHistory, MetricSource, Request, RequestCounts

__all__ = [
    "AlertConfig",
    "AlertConfigError",
    "AlertState",
    "MetricHistory",
    "MetricSource",
    "Notifier",
    "Receiver",
    "Request",
    "RequestCounts",
    "Rule",
    "TickReport",
    "Transition",
    "burn_rate",
    "evaluate",
    "fingerprint",
    "load_config",
    "parse_config",
    "rules_path",
]
