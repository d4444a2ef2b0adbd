"""Traffic management on a real gateway: experiments, segments, canary, shadows, bandit,
feedback and live policy changes, with every decision visible in the prediction log."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from roost_testing import (
    deploy_model,
    make_failing_onnx,
    make_linear_onnx,
    make_mlp_onnx,
    running_gateway,
)

from registry import Registry, RoostSettings, State
from warehouse import run_query

ADMIN = {"x-api-key": "roost-dev-key"}  # dev mode's admin key
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())
    )


def add_validated(registry: Registry, model: str, data: bytes, **kw: object) -> int:
    info = registry.register_version(model, data, **kw)  # type: ignore[arg-type]
    registry.transition(model, info.version, State.VALIDATING, reason="t")
    registry.transition(model, info.version, State.VALIDATED, reason="t")
    return int(info.version)


def query_until(settings: RoostSettings, sql: str, done: object, timeout_s: float = 15) -> list:
    deadline = time.monotonic() + timeout_s
    while True:
        _, rows = run_query(settings.logs_dir, sql)
        if done(rows):  # type: ignore[operator]
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)


@pytest.fixture
def fast(settings: RoostSettings) -> RoostSettings:
    return settings.model_copy(
        update={"poll_interval_s": 0.1, "log_flush_interval_s": 0.2, "dev_mode": True}
    )


@pytest.fixture
def gateway(fast: RoostSettings, registry: Registry) -> Iterator[str]:
    deploy_model(registry, "m", make_linear_onnx(seed=1))  # v1 production
    add_validated(registry, "m", make_linear_onnx(seed=2))  # v2
    with running_gateway(fast) as url:
        yield url


def test_experiment_split_is_sticky_and_logged(gateway: str, fast: RoostSettings) -> None:
    resp = httpx.put(
        f"{gateway}/admin/models/m/traffic",
        headers=ADMIN,
        json={
            "experiments": [
                {
                    "id": "exp-1",
                    "variants": [
                        {"version": 1, "weight": 50, "name": "control"},
                        {"version": 2, "weight": 50, "name": "treatment"},
                    ],
                }
            ]
        },
    )
    assert resp.status_code == 200, resp.text
    seen: dict[str, str] = {}
    with httpx.Client(base_url=gateway) as client:
        for i in range(300):
            user = f"user-{i % 150}"
            r = client.post("/v2/models/m/infer", json=BODY, headers={"roost-user": user})
            assert r.status_code == 200
            variant = r.headers["roost-variant"]
            body = r.json()
            assert body["parameters"]["roost_variant"] == variant
            assert body["parameters"]["roost_experiment"] == "exp-1"
            assert body["model_version"] == ("1" if variant == "control" else "2")
            assert seen.setdefault(user, variant) == variant, "assignment is not sticky"
    split = Counter(seen.values())
    assert 45 <= split["control"] <= 105 and split["control"] + split["treatment"] == 150
    # per-variant request counts and latencies
    text = httpx.get(f"{gateway}/metrics").text
    served = Counter(variant for variant in seen.values())
    for variant in ("control", "treatment"):
        counted = metric(text, "roost_requests_total", model="m", variant=variant, status="200")
        assert counted == 2 * served[variant]
        timed = metric(text, "roost_request_latency_seconds_count", model="m", variant=variant)
        assert timed == counted
    rows = query_until(
        fast,
        "select variant, experiment, route, count(*) from predictions "
        "where experiment = 'exp-1' group by all order by variant",
        lambda rows: sum(r[3] for r in rows) == 300,
    )
    assert {(r[0], r[1], r[2]) for r in rows} == {
        ("control", "exp-1", "experiment"),
        ("treatment", "exp-1", "experiment"),
    }


def test_segments_flags_canary_and_pinning(gateway: str, registry: Registry) -> None:
    registry.start_canary("m", 2, 100)
    deadline = time.monotonic() + 10
    while httpx.post(f"{gateway}/v2/models/m/infer", json=BODY).headers["roost-variant"] != (
        "canary"
    ):
        assert time.monotonic() < deadline, "canary policy not picked up"
        time.sleep(0.1)
    v3 = add_validated(registry, "m", make_linear_onnx(seed=3))
    policy = registry.get_policy("m").to_dict()
    policy["segments"] = [
        {"id": "beta", "version": v3, "match": {"header": "X-Tier", "values": ["beta"]}},
        {"id": "dark-launch", "version": v3, "match": {"flag": "new-model"}},
    ]
    assert (
        httpx.put(f"{gateway}/admin/models/m/traffic", headers=ADMIN, json=policy).status_code
        == 200
    )

    def answer(**headers: str) -> tuple[str, str]:
        r = httpx.post(f"{gateway}/v2/models/m/infer", json=BODY, headers=headers)
        assert r.status_code == 200
        return r.headers["roost-variant"], r.json()["model_version"]

    assert answer(**{"x-tier": "beta"}) == ("beta", "3")
    assert answer(**{"roost-flags": "other, new-model"}) == ("dark-launch", "3")
    assert answer() == ("canary", "2")
    pinned = httpx.post(f"{gateway}/v2/models/m/versions/1/infer", json=BODY)
    assert pinned.json()["model_version"] == "1" and pinned.headers["roost-variant"] == "v1"
    # promote through the admin API: v2 becomes production, the canary is cleared
    assert httpx.post(f"{gateway}/admin/models/m/canary/promote", headers=ADMIN).status_code == 200
    assert registry.get_version("m", 2).state is State.PRODUCTION
    assert answer() == ("production", "2")


def test_invalid_policy_is_refused_and_running_policy_untouched(gateway: str) -> None:
    bad = httpx.put(
        f"{gateway}/admin/models/m/traffic",
        headers=ADMIN,
        json={
            "experiments": [
                {
                    "id": "e",
                    "variants": [{"version": 1, "weight": 60}, {"version": 2, "weight": 60}],
                }
            ]
        },
    )
    assert bad.status_code == 400 and "weights must sum to 100, got 120" in bad.json()["error"]
    unknown = httpx.post(f"{gateway}/admin/models/m/shadows", headers=ADMIN, json={"version": 9})
    assert unknown.status_code == 400 and "no version 9" in unknown.json()["error"]
    assert httpx.get(f"{gateway}/admin/models/m/traffic", headers=ADMIN).json()["experiments"] == []
    r = httpx.post(f"{gateway}/v2/models/m/infer", json=BODY)
    assert r.headers["roost-variant"] == "production"


def test_shadows_never_touch_the_primary(fast: RoostSettings, registry: Registry) -> None:
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    good = add_validated(registry, "m", make_linear_onnx(seed=2))
    # without warm-up the failing model loads, then raises on every request
    failing = add_validated(registry, "m", make_failing_onnx(), config={"warmup_runs": 0})
    slow = add_validated(
        registry, "m", make_mlp_onnx(hidden=2048, layers=8), config={"max_batch_size": 1}
    )
    registry.set_policy(
        "m",
        {
            "shadows": [
                {"version": good, "percent": 100},
                {"version": failing, "percent": 100},
                {"version": slow, "percent": 100},
            ]
        },
    )
    settings = fast.model_copy(update={"shadow_queue_size": 8})
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()

    def send(start: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(start, start + 60):
                r = client.post("/v2/models/m/infer", json=BODY | {"id": f"req-{i}"})
                statuses[r.status_code] += 1
                versions[r.json().get("model_version", "")] += 1

    with running_gateway(settings) as url:
        senders = [threading.Thread(target=send, args=(k * 1000,)) for k in range(4)]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        metrics = httpx.get(f"{url}/metrics").text
    assert statuses == {200: 240} and versions == {"1": 240}
    dropped = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("roost_shadow_dropped_total{")
    )
    assert dropped > 0, "a slow shadow behind a queue of 8 must drop copies"
    copies = {
        outcome: metric(metrics, "roost_shadow_copies_total", model="m", outcome=outcome)
        for outcome in ("mirrored", "failed", "dropped")
    }
    assert copies["dropped"] == dropped
    assert metric(metrics, "roost_shadow_copies_total", version=str(good), outcome="mirrored") > 0
    assert metric(metrics, "roost_shadow_copies_total", version=str(failing), outcome="failed") > 0
    assert copies["mirrored"] + copies["failed"] + copies["dropped"] <= 3 * 240
    rows = query_until(
        fast,
        "select p.request_id, p.outputs = s.outputs, s.version from predictions p "
        "join predictions s using (request_id) "
        f"where not p.shadow and s.shadow and s.version = {good} and s.status = 200",
        lambda rows: len(rows) >= 20,
    )
    assert all(same is False for _, same, _ in rows), "shadow v2 should answer differently"
    failed = query_until(
        fast,
        f"select count(*), any_value(error) from predictions where shadow and version = {failing}",
        lambda rows: rows[0][0] > 0,
    )
    assert "inference failed" in failed[0][1]


def test_a_shadow_adapts_v1_records_to_its_own_feature_order(
    fast: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "r", make_linear_onnx(seed=1), feature_names=["a", "b", "c", "d"])
    reverse = add_validated(
        registry, "r", make_linear_onnx(seed=2), feature_names=["d", "c", "b", "a"]
    )
    registry.set_policy("r", {"shadows": [{"version": reverse, "percent": 100}]})
    with running_gateway(fast) as url:
        resp = httpx.post(
            f"{url}/v1/models/r:predict",
            json={"id": "records-1", "instances": [{"a": 1, "b": 2, "c": 3, "d": 4}]},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        rows = query_until(
            fast,
            "select shadow, inputs from predictions where request_id = 'records-1' "
            "order by shadow",
            lambda rows: len(rows) == 2,
        )
    (_, primary), (_, shadow) = rows
    assert json.loads(primary)["inputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0]
    assert json.loads(shadow)["inputs"][0]["data"] == [4.0, 3.0, 2.0, 1.0]


def test_bandit_moves_traffic_to_the_rewarded_arm(gateway: str, fast: RoostSettings) -> None:
    resp = httpx.put(
        f"{gateway}/admin/models/m/traffic",
        headers=ADMIN,
        json={"bandit": {"id": "b1", "arms": [1, 2], "algorithm": "thompson", "floor": 0.05}},
    )
    assert resp.status_code == 200, resp.text
    rates = {"1": 0.1, "2": 0.6}
    shares = []
    with httpx.Client(base_url=gateway) as client:
        for round_ in range(12):
            feedback, served = [], Counter()
            for i in range(40):
                r = client.post("/v2/models/m/infer", json=BODY).json()
                version = r["model_version"]
                served[version] += 1
                assert r["parameters"]["roost_route"] == "bandit"
                reward = 1 if (hash((round_, i)) % 100) / 100 < rates[version] else 0
                feedback.append({"request_id": r["id"], "reward": reward})
            ok = client.post("/v1/feedback", json={"feedback": feedback})
            assert ok.status_code == 200 and ok.json() == {"accepted": 40}
            shares.append(served["2"] / 40)
    assert sum(shares[-4:]) / 4 > 0.7, shares
    rows = query_until(
        fast,
        "select count(*), sum(f.reward) from feedback f join predictions p using (request_id) "
        "where not p.shadow",
        lambda rows: rows[0][0] == 480,
    )
    assert rows[0][1] > 0


def test_feedback_errors(gateway: str) -> None:
    unknown = httpx.post(f"{gateway}/v1/feedback", json={"request_id": "nope", "label": 1})
    assert unknown.status_code == 404 and "'nope'" in unknown.json()["error"]
    served = httpx.post(f"{gateway}/v2/models/m/infer", json=BODY).json()["id"]
    empty = httpx.post(f"{gateway}/v1/feedback", json={"request_id": served})
    assert empty.status_code == 400 and "a label or a reward" in empty.json()["error"]
    bad = httpx.post(f"{gateway}/v1/feedback", json={"request_id": served, "label": "yes"})
    assert bad.status_code == 400 and "feedback.label" in bad.json()["error"]
    ok = httpx.post(f"{gateway}/v1/feedback", json={"request_id": served, "label": 1})
    assert ok.status_code == 200


def test_live_policy_changes_under_load_fail_no_request(gateway: str, registry: Registry) -> None:
    stop = threading.Event()
    statuses: Counter[int] = Counter()

    def hammer() -> None:
        with httpx.Client(base_url=gateway, timeout=10) as client:
            while not stop.is_set():
                r = client.post("/v2/models/m/infer", json=BODY, headers={"roost-user": "u"})
                statuses[r.status_code] += 1

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        for i in range(6):
            registry.set_policy(
                "m",
                {
                    "experiments": [
                        {
                            "id": f"e{i}",
                            "variants": [
                                {"version": 1, "weight": 50},
                                {"version": 2, "weight": 50},
                            ],
                        }
                    ]
                },
            )
            time.sleep(0.25)
            registry.set_policy("m", {"shadows": [{"version": 2, "percent": 100}]})
            time.sleep(0.25)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert set(statuses) == {200} and statuses[200] > 50
