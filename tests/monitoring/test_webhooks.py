"""Delivery to real HTTP receivers on loopback: Alertmanager webhook JSON, retries, dedup,
resolve, the outbox across a restart; and the alert sensor end to end on real Parquet logs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from canary_testing import Arm, every, write_log
from dagster import SensorResult, build_sensor_context

from assets.resources import RegistryResource
from monitoring.alerts import AlertState, Notifier, fingerprint, parse_config
from orchestration.alert_events import emit_alert, read_alerts
from orchestration.alert_sensor import STATE_DIR, make_alert_sensor
from registry import RoostSettings
from warehouse import run_query

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class Receiver:
    """A webhook receiver on loopback: answers the queued status codes first, then 200."""

    def __init__(self) -> None:
        self.plan: list[int] = []
        self.bodies: list[dict[str, Any]] = []  # accepted (2xx) bodies
        self.attempts = 0
        self.headers: list[dict[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.attempts += 1
                owner.headers.append(dict(self.headers))
                code = owner.plan.pop(0) if owner.plan else 200
                if code < 300:
                    owner.bodies.append(body)
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def alerts(self) -> list[dict[str, Any]]:
        return [a for body in self.bodies for a in body["alerts"]]


@pytest.fixture
def hook() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def pager() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def config(*receivers: dict[str, Any], **extra: Any) -> Any:
    return parse_config({
        "receivers": list(receivers), "repeat_interval": "1h", "external_url": "http://dagster",
        "retry": {"attempts": 3, "backoff_s": 0.01, "max_backoff_s": 0.05}, **extra,
    })


def state(firing: bool, model: str = "fraud", for_s: float = 0.0,
          severity: str = "page") -> AlertState:
    labels = {"alertname": "RoostErrorBudgetBurnFast", "severity": severity, "model": model}
    return AlertState("RoostErrorBudgetBurnFast", labels,
                      {"summary": f"{model}: burning", "description": "20x over 1h and 5m"},
                      firing, 20.0 if firing else 0.0, for_s)


def test_a_receiver_failing_twice_gets_the_alert_once_after_retries(
    hook: Receiver, tmp_path: Path,
) -> None:
    hook.plan = [503, 500]
    notifier = Notifier(config({"name": "ops", "url": hook.url,
                                "headers": {"Authorization": "Bearer t0ken"}}), tmp_path)
    report = notifier.tick([state(True)], NOW)
    assert hook.attempts == 3 and len(hook.bodies) == 1
    assert report.delivered and notifier.outbox == []
    (body,) = hook.bodies
    assert hook.headers[-1]["Authorization"] == "Bearer t0ken"
    labels = {"alertname": "RoostErrorBudgetBurnFast", "severity": "page", "model": "fraud"}
    assert body == {
        "version": "4", "groupKey": '{}:{alertname="RoostErrorBudgetBurnFast"}',
        "truncatedAlerts": 0, "status": "firing", "receiver": "ops",
        "groupLabels": {"alertname": "RoostErrorBudgetBurnFast"},
        "commonLabels": labels,
        "commonAnnotations": {"summary": "fraud: burning", "description": "20x over 1h and 5m"},
        "externalURL": "http://dagster",
        "alerts": [{
            "status": "firing", "labels": labels,
            "annotations": {"summary": "fraud: burning", "description": "20x over 1h and 5m"},
            "startsAt": NOW.isoformat(), "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
            "fingerprint": fingerprint(labels),
        }],
    }
    # the fingerprint is a stable hash of the sorted labels
    assert fingerprint(dict(reversed(list(labels.items())))) == fingerprint(labels)


def test_dedup_repeat_interval_and_resolve(hook: Receiver, tmp_path: Path) -> None:
    notifier = Notifier(config({"name": "ops", "url": hook.url}), tmp_path)
    notifier.tick([state(True)], NOW)
    notifier.tick([state(True)], NOW + timedelta(minutes=1))  # still firing: nothing sent
    assert len(hook.bodies) == 1
    notifier.tick([state(True)], NOW + timedelta(minutes=61))  # repeat interval (1 h) passed
    assert len(hook.bodies) == 2 and hook.bodies[1]["alerts"][0]["startsAt"] == NOW.isoformat()
    report = notifier.tick([state(False)], NOW + timedelta(minutes=70))
    assert [t.status for t in report.transitions] == ["resolved"]
    resolved = hook.bodies[2]
    assert resolved["status"] == "resolved"
    assert resolved["alerts"][0]["endsAt"] == (NOW + timedelta(minutes=70)).isoformat()
    notifier.tick([state(False)], NOW + timedelta(minutes=80))
    assert len(hook.bodies) == 3  # resolved once


def test_the_outbox_survives_a_restart(hook: Receiver, tmp_path: Path) -> None:
    hook.plan = [503] * 3  # every attempt of the first tick fails
    first = Notifier(config({"name": "ops", "url": hook.url}), tmp_path)
    report = first.tick([state(True)], NOW)
    assert report.failed and report.queued == 1 and hook.bodies == []
    # a new process: the alert is neither lost nor generated a second time
    again = Notifier(config({"name": "ops", "url": hook.url}), tmp_path)
    assert len(again.outbox) == 1
    report = again.tick([state(True)], NOW + timedelta(minutes=1))
    assert report.delivered and len(hook.bodies) == 1 and again.outbox == []
    Notifier(config({"name": "ops", "url": hook.url}), tmp_path).tick(
        [state(True)], NOW + timedelta(minutes=2))
    assert len(hook.bodies) == 1


def test_a_4xx_is_not_retried_and_a_dead_receiver_waits_with_backoff(
    hook: Receiver, tmp_path: Path,
) -> None:
    hook.plan = [400]
    notifier = Notifier(config({"name": "ops", "url": hook.url}), tmp_path)
    report = notifier.tick([state(True)], NOW)
    assert hook.attempts == 1 and report.queued == 0 and "HTTP 400" in report.failed[0]
    dead = Notifier(config({"name": "gone", "url": "http://127.0.0.1:9/"}), tmp_path / "d")
    assert dead.tick([state(True)], NOW).queued == 1
    (item,) = dead.outbox
    assert item["attempts"] == 3 and datetime.fromisoformat(item["nextAt"]) > NOW


def test_routing_by_severity_and_for(hook: Receiver, pager: Receiver, tmp_path: Path) -> None:
    notifier = Notifier(config({"name": "all", "url": hook.url},
                               {"name": "pager", "url": pager.url, "severities": ["page"]}),
                        tmp_path)
    warning = state(True, model="iris", severity="warning", for_s=300)
    notifier.tick([state(True), warning], NOW)
    assert [a["labels"]["model"] for a in pager.alerts()] == ["fraud"]
    assert [a["labels"]["model"] for a in hook.alerts()] == ["fraud"]  # iris still pending
    notifier.tick([state(True), warning], NOW + timedelta(minutes=5))
    assert [a["labels"]["model"] for a in hook.alerts()] == ["fraud", "iris"]
    assert len(pager.alerts()) == 1


def test_events_of_other_writers_are_forwarded_once(hook: Receiver, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    emit_alert(logs, alertname="CanaryRollback", model="fraud", version=2, severity="critical",
               summary="fraud v2: canary rolled back", description="5xx", starts_at=NOW,
               labels={"rollout": "7"})
    emit_alert(logs, alertname="Ours", model="fraud", version=None, summary="s",
               description="d", starts_at=NOW, source="alert_rules")
    events = logs / "alerts" / "events.jsonl"
    notifier = Notifier(config({"name": "ops", "url": hook.url}), tmp_path / "state")
    notifier.tick([], NOW, events_file=events)
    notifier.tick([], NOW + timedelta(minutes=1), events_file=events)
    (alert,) = hook.alerts()
    assert alert["labels"] == {"alertname": "CanaryRollback", "model": "fraud", "version": "2",
                               "severity": "critical", "rollout": "7"}
    assert alert["fingerprint"] == fingerprint(alert["labels"])


# -- the sensor, end to end ---------------------------------------------------------------------


def test_the_alert_sensor_pages_records_and_resolves(hook: Receiver, tmp_path: Path) -> None:
    settings = RoostSettings(home=tmp_path / "roost")
    rules = tmp_path / "alerts.yaml"
    rules.write_text(json.dumps({
        "receivers": [{"name": "ops", "url": hook.url, "severities": ["page", "critical"]}],
        "retry": {"backoff_s": 0.01},
        "rules": [{"name": "RoostErrorBudgetBurnFast", "kind": "burn_rate", "severity": "page",
                   "long_window": "1h", "short_window": "5m", "factor": 14.4}],
    }))
    # 2000 requests over the 100 s before NOW, every 100th a 503: 1 % errors -> 100x.
    start = NOW - timedelta(seconds=100)
    write_log(settings.logs_dir, start, Arm("production", 1, "production", 2000,
                                            status=every(100, 503)),
              model="fraud", spacing=timedelta(milliseconds=50))
    emit_alert(settings.logs_dir, alertname="CanaryRollback", model="fraud", version=2,
               summary="fraud v2: canary rolled back", description="5xx", starts_at=NOW)
    clock = {"now": NOW}
    sensor = make_alert_sensor(interval_s=30, clock=lambda: clock["now"], rules_file=rules)
    resources = {"registry": RegistryResource(home=str(settings.home))}

    with build_sensor_context(resources=resources) as context:
        result = sensor(context)
    assert isinstance(result, SensorResult)
    assert json.loads(result.cursor or "{}")["firing"] == ["RoostErrorBudgetBurnFast"]
    names = sorted(a["labels"]["alertname"] for a in hook.alerts())
    assert names == ["CanaryRollback", "RoostErrorBudgetBurnFast"]
    page = next(a for a in hook.alerts() if a["labels"]["severity"] == "page")
    assert "100.0x over 1h" in page["annotations"]["summary"]
    assert (settings.home / STATE_DIR / "state.json").is_file()

    # Ten minutes on, the 5-minute window is clean: resolved, delivered and recorded.
    clock["now"] = NOW + timedelta(minutes=10)
    with build_sensor_context(resources=resources, cursor=result.cursor) as context:
        sensor(context)
    assert hook.bodies[-1]["status"] == "resolved"
    ours = [e for e in read_alerts(settings.logs_dir) if e.get("source") == "alert_rules"]
    assert [e["status"] for e in ours] == ["firing", "resolved"]
    assert ours[0]["fingerprint"] == page["fingerprint"]
    _, rows = run_query(settings.logs_dir, "SELECT alertname, status FROM alerts "
                                           "WHERE alertname LIKE 'RoostError%' ORDER BY 2")
    assert rows == [("RoostErrorBudgetBurnFast", "firing"),
                    ("RoostErrorBudgetBurnFast", "resolved")]
    assert len(hook.alerts()) == 3  # page, canary rollback, resolve: nothing twice
