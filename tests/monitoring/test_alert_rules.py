"""Alert rules: the YAML, each rule firing and resolving on synthetic metric histories, the
DuckDB source on real Parquet logs, and the generated Prometheus rule file."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from canary_testing import Arm, every, write_log

from monitoring.alerts import (
    AlertConfigError,
    MetricHistory,
    Request,
    Rule,
    evaluate,
    parse_config,
)
from monitoring.alerts.config import DEFAULT_RULES_FILE, load_config, rules_path
from monitoring.alerts.logsource import LogSource
from monitoring.alerts.prometheus import METRICS, RULES_FILE, main, prometheus_rules, render
from monitoring.alerts.source import Artifact, DriftReport
from warehouse.sql import DRIFT_SCORES_DIR, DRIFT_SCORES_SCHEMA

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def rule(**fields: object) -> Rule:
    (parsed,) = parse_config({"rules": [{"name": "R", **fields}]}).rules
    return parsed


def requests(model: str, start: datetime, n: int, step: timedelta, **kw: object) -> list[Request]:
    return [Request(start + i * step, model, **kw) for i in range(n)]  # type: ignore[arg-type]


# -- the configuration --------------------------------------------------------------------------


def test_the_shipped_defaults_load_and_errors_name_rule_and_field(tmp_path: Path) -> None:
    kinds = {type(r).__name__ for r in load_config(DEFAULT_RULES_FILE).rules}
    assert kinds == {"BurnRateRule", "LatencyRule", "ErrorRateRule", "DriftRule",
                     "AccuracyRule", "FreshnessRule"}
    bad = tmp_path / "alerts.yaml"
    bad.write_text("rules:\n  - {name: Ok, kind: drift}\n"
                   "  - {name: SlowFraud, kind: latency, threshold_ms: -5, window: 5 minutes}\n"
                   "receivers:\n  - {name: ops, url: 'ftp://x'}\n")
    with pytest.raises(AlertConfigError) as caught:
        load_config(bad)
    message = str(caught.value)
    assert f"{bad}: rules[1] (SlowFraud).threshold_ms: Input should be greater than 0" in message
    assert "rules[1] (SlowFraud).window: Value error, '5 minutes' is not a duration" in message
    assert "receivers[0] (ops).url" in message
    with pytest.raises(AlertConfigError, match=r"rules\[0\] \(X\).kind|tag 'p99'"):
        parse_config({"rules": [{"name": "X", "kind": "p99"}]})
    with pytest.raises(AlertConfigError, match="two rules are named 'A'"):
        parse_config({"rules": [{"name": "A", "kind": "drift"}, {"name": "A", "kind": "drift"}]})
    # where the rules come from: explicit, else $ROOST_HOME/alerts.yaml, else the defaults
    assert rules_path(tmp_path / "nohome") == DEFAULT_RULES_FILE
    assert rules_path(tmp_path) == bad
    assert rules_path(tmp_path, Path("/etc/x.yaml")) == Path("/etc/x.yaml")


# -- each rule fires and resolves on a synthetic history ---------------------------------------


def test_latency_fires_then_resolves() -> None:
    r = rule(kind="latency", quantile=0.99, window="5m", threshold_ms=100)
    slow = requests("fraud", NOW - timedelta(minutes=5), 100, timedelta(seconds=3),
                    latency_ms=150.0)
    history = MetricHistory().add(slow)
    (fired,) = evaluate([r], history, NOW)
    assert fired.firing and fired.value == 150.0 and fired.labels["model"] == "fraud"
    history.add(requests("fraud", NOW + timedelta(seconds=1), 300, timedelta(seconds=1),
                         latency_ms=20.0))
    (later,) = evaluate([r], history, NOW + timedelta(minutes=5))
    assert not later.firing and later.value == 20.0
    # failed requests' latency does not count (the gateway's histogram neither)
    errors = MetricHistory().add(requests("fraud", NOW - timedelta(minutes=1), 10,
                                          timedelta(seconds=1), status=503, latency_ms=900.0))
    (nodata,) = evaluate([r], errors, NOW)
    assert nodata.value is None and not nodata.firing


def test_error_rate_fires_then_resolves() -> None:
    r = rule(kind="error_rate", window="5m", threshold=0.001, min_requests=100)
    history = MetricHistory().add(requests("fraud", NOW - timedelta(seconds=299), 200,
                                           timedelta(seconds=1)))
    history.add([Request(NOW, "fraud", 500)])  # 1 / 201 = 0.5 % > 0.1 %
    (fired,) = evaluate([r], history, NOW)
    assert fired.firing and fired.value == pytest.approx(1 / 201)
    (later,) = evaluate([r], history, NOW + timedelta(minutes=6))
    assert not later.firing and later.value is None  # window empty: no data


def test_drift_fires_resolves_and_missing_data_is_not_firing() -> None:
    r = rule(kind="drift", threshold=0.5, max_age="2d")
    history = MetricHistory(requests=[Request(NOW, "fraud")])
    (nodata,) = evaluate([r], history, NOW)
    assert not nodata.firing and nodata.value is None
    history.drift.append(DriftReport("fraud", NOW.date(), 0.75))
    (fired,) = evaluate([r], history, NOW)
    assert fired.firing and fired.value == 0.75
    history.drift.append(DriftReport("fraud", NOW.date() + timedelta(days=1), 0.25))
    (later,) = evaluate([r], history, NOW + timedelta(days=1))
    assert not later.firing and later.value == 0.25
    (stale,) = evaluate([r], history, NOW + timedelta(days=5))
    assert stale.value is None and not stale.firing


def test_accuracy_fires_then_resolves() -> None:
    r = rule(kind="accuracy", window="1h", threshold=0.8, min_labelled=50)
    history = MetricHistory().add(
        Request(NOW - timedelta(seconds=i + 1), "fraud", correct=i % 10 < 7) for i in range(100))
    (fired,) = evaluate([r], history, NOW)
    assert fired.firing and fired.value == pytest.approx(0.7)
    history.add(Request(NOW + timedelta(minutes=10, seconds=i), "fraud", correct=i % 10 < 9)
                for i in range(100))
    (later,) = evaluate([r], history, NOW + timedelta(hours=1))
    assert not later.firing and later.value == pytest.approx(0.9)
    few = MetricHistory().add([Request(NOW, "fraud", correct=False)] * 10)
    (nodata,) = evaluate([r], few, NOW)
    assert nodata.value is None and not nodata.firing  # 10 < min_labelled


def test_freshness_fires_then_resolves() -> None:
    r = rule(kind="freshness", max_age="1h")
    registered = NOW - timedelta(minutes=90)
    history = MetricHistory(artifacts=[Artifact("fraud", 1, NOW - timedelta(days=3),
                                                "PRODUCTION"),
                                       Artifact("fraud", 2, registered, "STAGING")])
    (fired,) = evaluate([r], history, NOW)
    assert fired.firing and fired.value == 5400 and "v2" in fired.annotations["summary"]
    (young,) = evaluate([r], history, registered + timedelta(minutes=59))
    assert not young.firing
    history.artifacts[1] = Artifact("fraud", 2, registered, "PRODUCTION")
    (later,) = evaluate([r], history, NOW)
    assert not later.firing and later.value is None
    history.artifacts.append(Artifact("fraud", 3, registered, "FAILED"))  # not on its way
    assert not evaluate([r], history, NOW)[0].firing


def test_models_selector() -> None:
    r = rule(kind="error_rate", threshold=0.1, models=["iris"])
    history = MetricHistory().add([Request(NOW, "fraud", 503), Request(NOW, "iris", 200)])
    assert [s.labels["model"] for s in evaluate([r], history, NOW)] == ["iris"]


# -- the DuckDB source on real Parquet logs ----------------------------------------------------


def test_log_source_matches_the_synthetic_history(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    start = NOW - timedelta(minutes=4)
    arm = Arm("production", 1, "production", 400, status=every(50, 503),
              latency=lambda i: float(i % 100))
    write_log(logs, start, arm, model="fraud", spacing=timedelta(milliseconds=500))
    history = MetricHistory().add(
        Request(start + i * timedelta(milliseconds=500), "fraud", arm.status(i), arm.latency(i),
                correct=(arm.correct(i) if arm.status(i) < 400 else None)) for i in range(arm.n))
    since = NOW - timedelta(minutes=5)
    with LogSource(logs) as source:
        assert source.models() == history.models() == ["fraud"]
        assert source.request_counts("fraud", since, NOW) == history.request_counts(
            "fraud", since, NOW)
        assert source.request_counts(None, since, NOW).server_errors == 8  # 400 / 50
        got, n = source.latency_quantile("fraud", 0.99, since, NOW)
        want, m = history.latency_quantile("fraud", 0.99, since, NOW)
        assert (n, m) == (392, 392) and got == pytest.approx(want)
        assert source.accuracy("fraud", since, NOW, "label") == history.accuracy(
            "fraud", since, NOW, "label")
        assert source.drift_share("fraud", NOW.date()) is None  # no drift scores: no data
    drift = logs / DRIFT_SCORES_DIR
    drift.mkdir(parents=True)
    day = NOW.date()
    rows = [("fraud", day - timedelta(days=1), "a", True, 1.0), ("fraud", day, "a", True, 0.5),
            ("fraud", day, "b", False, 0.5)]
    pq.write_table(pa.Table.from_pylist([
        {"model": m, "date": d, "feature": f, "test": "ks", "statistic": 0.3, "p_value": 0.01,
         "score": 0.01, "threshold": 0.05, "drifted": x, "share_drifted": share,
         "reference_rows": 100, "current_rows": 100, "computed_at": NOW}
        for m, d, f, x, share in rows], schema=DRIFT_SCORES_SCHEMA), drift / "part-0.parquet")
    with LogSource(logs) as source:
        assert source.drift_share("fraud", day - timedelta(days=2)) == 0.5
        assert source.drift_share("fraud", day + timedelta(days=1)) is None


# -- the Prometheus rule file ------------------------------------------------------------------


def test_the_committed_prometheus_rules_are_up_to_date() -> None:
    assert RULES_FILE.read_text() == render(load_config(DEFAULT_RULES_FILE)), (
        "deploy/prometheus/roost-alerts.yaml is stale: python -m monitoring.alerts.prometheus")
    assert main(["--check"]) == 0


def _check_expr(expr: str, recorded: set[str]) -> None:
    depth = 0
    for char in expr:
        depth += {"(": 1, ")": -1}.get(char, 0)
        assert depth >= 0, expr
    assert depth == 0 and expr.count("{") == expr.count("}") and expr.count("[") == \
        expr.count("]"), expr
    names = set(re.findall(r"\b(roost[a-z_:]*[a-z0-9_]+)\s*[\[{]", expr))
    names |= set(re.findall(r"\b((?:roost|model):[a-z_]+:[a-z0-9_]+)\b", expr))
    assert names and names <= METRICS | recorded, names - METRICS - recorded


def test_the_rule_file_is_valid() -> None:
    data = yaml.safe_load(RULES_FILE.read_text())
    assert data == prometheus_rules(load_config(DEFAULT_RULES_FILE))
    recorded: set[str] = set()
    alerts = {}
    for group in data["groups"]:
        assert set(group) == {"name", "rules"}
        for r in group["rules"]:
            if "record" in r:
                assert set(r) == {"record", "expr"}
                _check_expr(r["expr"], set())
                recorded.add(r["record"])
            else:
                assert {"alert", "expr", "labels", "annotations"} <= set(r) <= {
                    "alert", "expr", "for", "labels", "annotations"}
                _check_expr(r["expr"], recorded)
                assert r["labels"]["severity"] and r["annotations"]["summary"]
                alerts[r["alert"]] = r
    assert set(alerts) == {"RoostErrorBudgetBurnFast", "RoostErrorBudgetBurnSlow",
                           "RoostLatencyP99High", "RoostErrorRateHigh"}
    assert "roost:slo_errors_per_request:ratio_rate1h > (14.4 * (1 - 0.9999))" in (
        alerts["RoostErrorBudgetBurnFast"]["expr"])
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed: structure checked, not PromQL")
    done = subprocess.run([promtool, "check", "rules", str(RULES_FILE)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout


PROMTOOL_TEST = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    # 1000 requests a minute; 2 a minute fail (0.2 % -> 20x the 99.99 % budget) for 90 min.
    input_series:
      - series: 'roost_requests_total{{model="fraud", status="200"}}'
        values: '0+998x90'
      - series: 'roost_requests_total{{model="fraud", status="503"}}'
        values: '0+2x90'
    alert_rule_test:
      - eval_time: 70m
        alertname: RoostErrorBudgetBurnFast
        exp_alerts:
          - exp_labels: {{severity: page}}
            exp_annotations:
              summary: "all models: error budget burning faster than 14.4x over 1h and 5m"
              description: "{fast}"
      - eval_time: 70m
        alertname: RoostLatencyP99High
        exp_alerts: []
"""


def test_promtool_fires_the_page_on_a_20x_burn(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    fast = next(r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]
                if r.get("alert") == "RoostErrorBudgetBurnFast")
    spec = tmp_path / "test.yaml"
    spec.write_text(PROMTOOL_TEST.format(rules=RULES_FILE,
                                         fast=fast["annotations"]["description"]))
    done = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
