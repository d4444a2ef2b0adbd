"""Fairness (issue 14): metrics against hand-computed values, the blocking validation check on
the clean and the biased fraud generator, logged fairness into the ``fairness`` view, and the
``fairness`` alert rule."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from dagster import AssetCheckKey, AssetKey

from assets.demo_data import FRAUD_FEATURES, PROTECTED_ATTRIBUTE, generate_fraud_transactions
from assets.fairness import (
    held_out_fairness,
    logged_fairness,
    logged_frame,
    write_results,
)
from assets.lineage import build_lineage
from assets.spec import ModelSpec, SpecError, parse_spec
from assets.training import _to_onnx
from assets.validation_assets import check_names
from monitoring.alerts import MetricHistory, evaluate, parse_config
from monitoring.alerts.logsource import LogSource
from monitoring.alerts.source import FairnessFigures
from monitoring.fairness import FairnessBars, attribute_fairness
from warehouse import ParquetSink, PredictionLogWriter, PredictionRecord, run_query
from warehouse.feedback import FeedbackRecord, write_feedback

# 8 applicants, two groups of 4. Group a: decisions 1,1,1,0 (favorable rate 3/4); group b:
# 1,0,0,0 (1/4). Truths a: 1,1,0,0, b: 1,1,0,0.
GROUPS = ["a"] * 4 + ["b"] * 4
PRED = [1, 1, 1, 0, 1, 0, 0, 0]
TRUE = [1, 1, 0, 0, 1, 1, 0, 0]
EXACT = FairnessBars(min_group_size=1)


def test_metrics_match_hand_computed_values() -> None:
    res = attribute_fairness("g", GROUPS, PRED, TRUE, EXACT)
    rates = {g.group: g.selection_rate for g in res.groups}
    assert rates == {"a": 0.75, "b": 0.25}
    assert res.dp_difference == pytest.approx(0.5)  # 0.75 - 0.25
    assert res.di_ratio == pytest.approx(1 / 3)  # 0.25 / 0.75 < 0.8: adverse impact
    # TPR a = 2/2, b = 1/2; FPR a = 1/2, b = 0/2
    tpr = {g.group: g.tpr for g in res.groups}
    assert tpr == {"a": 1.0, "b": 0.5}
    assert res.eop_difference == pytest.approx(0.5)
    assert res.eo_difference == pytest.approx(0.5)  # max(|1 - 0.5|, |0.5 - 0|)
    assert not res.passed and "four-fifths" in res.violations[0]


def test_favorable_label_zero_measures_the_other_outcome() -> None:
    # favorable = 0: rates a = 1/4, b = 3/4 -> ratio 1/3 again, now against group a
    res = attribute_fairness("g", GROUPS, PRED, TRUE, FairnessBars(favorable_label=0,
                                                                   min_group_size=1))
    assert {g.group: g.selection_rate for g in res.groups} == {"a": 0.25, "b": 0.75}
    assert res.di_ratio == pytest.approx(1 / 3)
    # TPR of the favorable outcome (0) among the truly-0: a = 1/2, b = 2/2
    assert res.eop_difference == pytest.approx(0.5)


def test_four_fifths_boundary_and_small_groups() -> None:
    groups = ["a"] * 10 + ["b"] * 10
    pred = [1] * 10 + [1] * 8 + [0] * 2  # rates 1.0 and 0.8: ratio exactly 0.8 passes
    assert attribute_fairness("g", groups, pred, bars=EXACT).passed
    pred = [1] * 10 + [1] * 7 + [0] * 3  # 0.7 fails
    assert not attribute_fairness("g", groups, pred, bars=EXACT).passed
    small = attribute_fairness("g", groups, pred, bars=FairnessBars(min_group_size=11))
    assert not small.judged and small.passed and all(not g.judged for g in small.groups)


def test_spec_fairness_fields_are_validated() -> None:
    base = {"name": "m", "held_out": {"demo": "fraud"}}
    spec = parse_spec({**base, "fairness": {"attributes": ["age_band"], "favorable_label": 0}})
    assert spec.fairness is not None and spec.fairness.min_di_ratio == 0.8
    with pytest.raises(SpecError, match="fairness.attributes"):
        parse_spec({**base, "fairness": {"attributes": ["Age Band"]}})
    with pytest.raises(SpecError, match="fairness.min_di_ratio"):
        parse_spec({**base, "fairness": {"attributes": ["a"], "min_di_ratio": 1.5}})


@pytest.fixture(scope="module")
def fraud_onnx() -> bytes:
    """A model trained on the clean generator (it never sees ``age_band``)."""
    from sklearn.ensemble import GradientBoostingClassifier

    clean = generate_fraud_transactions(n_rows=4000, n_customers=400, seed=3)
    model = GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0)
    model.fit(clean.X, clean.y)
    onnx_bytes, _ = _to_onnx(model, len(FRAUD_FEATURES))
    return onnx_bytes


def _spec(tmp_path: Path, bias: float) -> ModelSpec:
    data = generate_fraud_transactions(n_rows=4000, n_customers=400, seed=5, bias=bias)
    path = tmp_path / f"held_out_{bias}.parquet"
    data.frame[[*FRAUD_FEATURES, "label", PROTECTED_ATTRIBUTE]].to_parquet(path)
    return parse_spec({
        "name": "fraud-fair", "source": {"kind": "onnx"},
        "held_out": {"path": str(path), "features": FRAUD_FEATURES},
        "fairness": {"attributes": [PROTECTED_ATTRIBUTE], "favorable_label": 0,
                     "max_dp_difference": 0.1},
    })


def test_blocking_check_passes_on_clean_data_and_fails_on_biased(
    tmp_path: Path, fraud_onnx: bytes
) -> None:
    from assets.held_out import load_held_out

    clean = _spec(tmp_path, 0.0)
    outcome = held_out_fairness(clean, fraud_onnx, load_held_out(clean.held_out, clean.name))
    assert outcome.passed, outcome.description
    assert float(outcome.metadata["age_band.di_ratio"]) > 0.95

    biased = _spec(tmp_path, 1.0)
    outcome = held_out_fairness(biased, fraud_onnx, load_held_out(biased.held_out, biased.name))
    assert not outcome.passed
    assert "four-fifths" in outcome.description and "DP difference" in outcome.description
    assert float(outcome.metadata["age_band.di_ratio"]) < 0.8
    assert "| 40_plus |" in str(outcome.metadata["report"])


def test_fairness_is_a_blocking_check_of_the_validation(tmp_path: Path) -> None:
    spec = _spec(tmp_path, 0.0)
    assert check_names(spec)[-1] == "fairness"
    checks = build_lineage(spec).checks_of(f"{spec.prefix}_validation")
    specs = [s for c in checks for s in c.check_specs if s.name == "fairness_check"]
    assert len(specs) == 1 and specs[0].blocking
    no_fairness = parse_spec({"name": "plain", "held_out": {"demo": "fraud"}})
    assert "fairness" not in check_names(no_fairness)


def test_missing_attribute_fails_closed(tmp_path: Path, fraud_onnx: bytes) -> None:
    spec = parse_spec({"name": "m", "held_out": {"demo": "fraud"},
                       "fairness": {"attributes": ["gender"]}})
    outcome = held_out_fairness(spec, fraud_onnx)
    assert not outcome.passed and "gender" in outcome.description


def _write_logged(logs: Path, day: datetime, biased: bool) -> None:
    """200 served fraud decisions with an ``age_band`` attribute, half labelled."""
    feedback = []
    with PredictionLogWriter(ParquetSink(logs), flush_rows=100_000) as writer:
        for i in range(200):
            band = "40_plus" if i % 2 else "under_40"
            # 10 % of each band flagged; biased: half of the 40_plus band
            flagged = int(i % 20 in (0, 1)) if not biased or band == "under_40" \
                else int((i // 2) % 10 < 5)
            out = orjson.dumps([{"name": "label", "datatype": "INT64", "shape": [1],
                                 "data": [flagged]}]).decode()
            inputs = orjson.dumps({"inputs": [], "attributes": {"age_band": band}}).decode()
            rid = f"r{i}"
            writer.append(PredictionRecord(
                request_id=rid, ts=day + timedelta(seconds=i), model="fraud-fair", version=1,
                inputs=inputs, outputs=out, latency_ms=1.0, status=200, user_id=None,
                protocol="v2-rest", error=None))
            if i % 2 == 0 or i % 3 == 0:
                feedback.append(FeedbackRecord(rid, "fraud-fair", 1, None, float(flagged), None,
                                               day + timedelta(minutes=5)))
    write_feedback(logs, feedback)


def test_logged_fairness_history_view_and_alert(tmp_path: Path) -> None:
    spec = _spec(tmp_path, 0.0)
    logs = tmp_path / "logs"
    days = [datetime(2026, 3, 1, 12, tzinfo=UTC), datetime(2026, 3, 2, 12, tzinfo=UTC)]
    for day, biased in zip(days, (False, True), strict=True):
        _write_logged(logs, day, biased)
        frame = logged_frame(logs, spec.name, day.date())
        assert len(frame) == 200 and set(frame["age_band"]) == {"40_plus", "under_40"}
        write_results(logs, spec.name, day.date(), logged_fairness(spec, frame),
                      int(frame["label"].notna().sum()))
    _, rows = run_query(logs, "select date, attribute, passed, round(di_ratio, 3) from fairness "
                              "order by date")
    assert rows == [(date(2026, 3, 1), "age_band", True, 1.0),
                    (date(2026, 3, 2), "age_band", False, round(0.5 / 0.9, 3))]

    rules = parse_config({"rules": [{"name": "AdverseImpact", "kind": "fairness",
                                     "models": ["fraud-fair"]}]}).rules
    with LogSource(logs) as source:
        (state,) = evaluate(rules, source, days[1] + timedelta(hours=1))
    assert state.firing and state.value == pytest.approx(0.5 / 0.9)
    assert "four-fifths" in state.annotations["description"]
    assert "age_band: DI ratio 0.556 < 0.8" in state.annotations["summary"]


def test_fairness_rule_on_a_synthetic_history() -> None:
    today = date(2026, 3, 10)
    history = MetricHistory(fairness_results=[
        FairnessFigures("m", today - timedelta(days=1), "age_band", 0.7, 0.05),
        FairnessFigures("m", today, "age_band", 0.9, 0.12, 0.02),
        FairnessFigures("m", today, "region", None, None, judged=False),
    ])
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    cfg = parse_config({"rules": [
        {"name": "FourFifths", "kind": "fairness"},
        {"name": "ParityGap", "kind": "fairness", "max_dp_difference": 0.1},
        {"name": "Stale", "kind": "fairness", "max_age": "1h"},
    ]})
    four, gap, stale = evaluate(cfg.rules, history, now)
    assert not four.firing and four.value == 0.9  # the latest day wins
    assert gap.firing and "DP difference 0.120 > 0.1" in gap.annotations["summary"]
    assert stale.value is None or stale.firing is False
    # an unknown field is named
    with pytest.raises(Exception, match=r"rules\[0\] \(F\)\.min_di_ratio"):
        parse_config({"rules": [{"name": "F", "kind": "fairness", "min_di_ratio": 2}]})


def test_definitions_register_the_fairness_asset_check_and_schedule(tmp_path: Path) -> None:
    from assets.spec import write_spec
    from orchestration.definitions import build_definitions

    spec = _spec(tmp_path, 0.0)
    write_spec(tmp_path, spec)
    defs = build_definitions(tmp_path)
    graph = defs.resolve_asset_graph()
    assert graph.has(AssetKey(f"{spec.prefix}_fairness"))
    assert AssetCheckKey(AssetKey(f"{spec.prefix}_validation"), "fairness_check") in (
        graph.asset_check_keys)
    assert defs.resolve_schedule_def("fairness_schedule").cron_schedule == "0 1 * * *"
