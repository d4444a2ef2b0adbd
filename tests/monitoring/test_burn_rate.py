"""SLO error-budget burn rates against hand-computed cases (99.99 % availability SLO).

burn rate = error ratio over the window / (1 - SLO) = error ratio / 0.0001.
Page: > 14.4x over BOTH 1 h and 5 min. Ticket: > 6x over BOTH 6 h and 30 min.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitoring.alerts import MetricHistory, Request, RequestCounts, burn_rate, evaluate
from monitoring.alerts.config import DEFAULT_RULES_FILE as DEFAULTS
from monitoring.alerts.config import BurnRateRule, load_config, parse_config

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SLO = 0.9999
RULES = parse_config({"rules": [
    {"name": "Page", "kind": "burn_rate", "severity": "page", "slo": SLO,
     "long_window": "1h", "short_window": "5m", "factor": 14.4},
    {"name": "Ticket", "kind": "burn_rate", "severity": "ticket", "slo": SLO,
     "long_window": "6h", "short_window": "30m", "factor": 6},
]}).rules
PAGE, TICKET = RULES


def segment(start: datetime, end: datetime, n: int, errors: int,
            model: str = "fraud") -> list[Request]:
    """``n`` requests evenly spread over ``(start, end]``, ``errors`` of them 503s, also
    evenly spread (request i fails when it completes the next 1/errors share)."""
    step = (end - start) / n
    failing = {round((k + 1) * n / errors) - 1 for k in range(errors)} if errors else set()
    return [Request(start + (i + 1) * step, model, 503 if i in failing else 200)
            for i in range(n)]


def ago(**kw: float) -> datetime:
    return NOW - timedelta(**kw)


def test_burn_rate_arithmetic() -> None:
    # 2 errors in 1000 requests = 0.2 % -> 0.002 / 0.0001 = 20x
    assert burn_rate(RequestCounts(1000, 2), SLO) == pytest.approx(20.0)
    # 7 in 10 000 = 0.07 % -> 7x
    assert burn_rate(RequestCounts(10_000, 7), SLO) == pytest.approx(7.0)
    # exactly the budget: 1 in 10 000 -> 1x
    assert burn_rate(RequestCounts(10_000, 1), SLO) == pytest.approx(1.0)
    # a 99.9 % SLO with 1 % errors -> 0.01 / 0.001 = 10x
    assert burn_rate(RequestCounts(100, 1), 0.999) == pytest.approx(10.0)
    assert burn_rate(RequestCounts(0, 0), SLO) is None  # no traffic: no data, never firing
    # The factors are the SRE workbook's budget shares of a 30-day period:
    month_h = 30 * 24
    assert 14.4 * 1 / month_h == pytest.approx(0.02)  # 14.4x for 1 h spends 2 %
    assert 6 * 6 / month_h == pytest.approx(0.05)  # 6x for 6 h spends 5 %
    assert 0.0001 * 30 * 24 * 60 == pytest.approx(4.32)  # the budget: 4.32 min a month


def test_page_when_both_windows_burn_above_14_4() -> None:
    # (now-1h, now-5m]: 11 000 requests, 22 errors; (now-5m, now]: 1000 requests, 2 errors.
    # 1 h: 24 / 12 000 = 0.2 % -> 20x; 5 min: 2 / 1000 = 0.2 % -> 20x; both > 14.4 -> page.
    history = MetricHistory().add(segment(ago(hours=1), ago(minutes=5), 11_000, 22))
    history.add(segment(ago(minutes=5), NOW, 1000, 2))
    (state,) = evaluate([PAGE], history, NOW)
    assert state.firing and state.severity == "page"
    assert state.details["long_burn_rate"] == pytest.approx(20.0)
    assert state.details["short_burn_rate"] == pytest.approx(20.0)
    assert "20.0x over 1h" in state.annotations["summary"]
    assert "model" not in state.labels  # one platform-wide alert


def test_no_page_once_the_errors_stopped() -> None:
    # (now-1h, now-5m]: 11 000 requests, 24 errors; the last 5 min: 1000 clean requests.
    # 1 h: 24 / 12 000 = 0.2 % -> 20x, but 5 min: 0 / 1000 -> 0x: the incident is over.
    history = MetricHistory().add(segment(ago(hours=1), ago(minutes=5), 11_000, 24))
    history.add(segment(ago(minutes=5), NOW, 1000, 0))
    (state,) = evaluate([PAGE], history, NOW)
    assert state.details["long_burn_rate"] == pytest.approx(20.0)
    assert state.details["short_burn_rate"] == 0.0
    assert not state.firing


def test_no_page_for_a_short_blip() -> None:
    # 5 min: 2 / 1000 -> 20x, but 1 h: 2 / 12 000 = 0.0167 % -> 1.67x.
    history = MetricHistory().add(segment(ago(hours=1), ago(minutes=5), 11_000, 0))
    history.add(segment(ago(minutes=5), NOW, 1000, 2))
    (state,) = evaluate([PAGE], history, NOW)
    assert state.details["short_burn_rate"] == pytest.approx(20.0)
    assert state.details["long_burn_rate"] == pytest.approx(2 / 12_000 / 0.0001)
    assert not state.firing


def test_ticket_at_7x_over_6h_and_8x_over_30m() -> None:
    # (now-6h, now-30m]: 55 000 requests, 38 errors; (now-30m, now]: 5000 requests, 4 errors.
    # 6 h: 42 / 60 000 = 0.07 % -> 7x; 30 min: 4 / 5000 = 0.08 % -> 8x: both > 6 -> ticket.
    history = MetricHistory().add(segment(ago(hours=6), ago(minutes=30), 55_000, 38))
    history.add(segment(ago(minutes=30), NOW, 5000, 4))
    page, ticket = evaluate(RULES, history, NOW)
    assert ticket.firing and ticket.severity == "ticket"
    assert ticket.details["long_burn_rate"] == pytest.approx(7.0)
    assert ticket.details["short_burn_rate"] == pytest.approx(8.0)
    # 1 h: the last 30 min (5000, 4 errors) + 5000 of the earlier requests with 3 or 4 of
    # their errors (here 4) -> 8 / 10 000 = 8x: far from 14.4, no page.
    assert not page.firing
    assert page.details["long_burn_rate"] == pytest.approx(8.0)  # 4 + 4 of 10 000


def test_ticket_not_at_5x() -> None:
    # 6 h: 30 / 60 000 = 0.05 % -> 5x (30 min: 3 / 5000 -> 6x, not above 6 either).
    history = MetricHistory().add(segment(ago(hours=6), ago(minutes=30), 55_000, 27))
    history.add(segment(ago(minutes=30), NOW, 5000, 3))
    _, ticket = evaluate(RULES, history, NOW)
    assert ticket.details["long_burn_rate"] == pytest.approx(5.0)
    assert not ticket.firing


def test_no_traffic_is_no_data_not_an_alert() -> None:
    page, ticket = evaluate(RULES, MetricHistory(), NOW)
    assert not page.firing and page.value is None and "no data" in page.annotations["summary"]
    assert not ticket.firing


def test_4xx_and_shadows_spend_no_budget() -> None:
    client_errors = [Request(ago(seconds=i + 1), "fraud", 400) for i in range(100)]
    shadows = [Request(ago(seconds=i + 1), "fraud", 503, shadow=True) for i in range(100)]
    history = MetricHistory().add(segment(ago(minutes=5), NOW, 1000, 0))
    history.add(client_errors).add(shadows)
    page, _ = evaluate(RULES, history, NOW)
    assert page.details["short_burn_rate"] == 0.0


def test_per_model_burn_rates() -> None:
    rule = BurnRateRule.model_validate({**PAGE.model_dump(by_alias=True), "per_model": True})
    history = MetricHistory().add(segment(ago(hours=1), NOW, 12_000, 24, model="fraud"))
    history.add(segment(ago(hours=1), NOW, 12_000, 0, model="iris"))
    states = {s.labels["model"]: s for s in evaluate([rule], history, NOW)}
    assert states["fraud"].firing and not states["iris"].firing


def test_the_shipped_rules_are_the_workbook_pairs() -> None:
    burn = [r for r in load_config(DEFAULTS).rules if isinstance(r, BurnRateRule)]
    assert {(r.severity, r.long_window_s, r.short_window_s, r.factor, r.slo) for r in burn} == {
        ("page", 3600, 300, 14.4, 0.9999), ("ticket", 6 * 3600, 1800, 6, 0.9999),
    }
