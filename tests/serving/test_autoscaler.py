"""The autoscaler's decisions on synthetic metric series (HPA semantics), and the one-machine
instance scaler against a real registry and real gateway metrics."""

from __future__ import annotations

import asyncio

import pytest
from roost_testing import make_linear_onnx

from registry import Registry
from serving.autoscaler import (
    Autoscaler,
    InstanceScaler,
    Sample,
    ScalingPolicy,
    autoscale_enabled,
    histogram_quantile,
    instance_policy,
    read_gateway_metrics,
    recommend,
    start_instance_autoscaler,
    stop_instance_autoscaler,
)
from serving.metrics import GatewayMetrics

POLICY = ScalingPolicy(
    min_replicas=2,
    max_replicas=10,
    target_queue_depth=8.0,
    target_p99_s=0.05,
    scale_up_window_s=0,
    scale_down_window_s=60,
    period_s=15,
)


def run(scaler: Autoscaler, samples: list[Sample]) -> list[int]:
    return [scaler.decide(s) for s in samples]


def test_recommend_per_metric_and_tolerance() -> None:
    # queue depth is per replica: 64 queued over 2 replicas at 8 each -> 8 replicas
    assert recommend(2, Sample(0, queue_depth=64), POLICY) == 8
    # within 10 % of every target: no change
    assert recommend(4, Sample(0, queue_depth=34, p99_s=0.054), POLICY) == 4
    # just outside the tolerance: ceil(4 * 1.2)
    assert recommend(4, Sample(0, queue_depth=4 * 8 * 1.2), POLICY) == 5
    # the largest metric's recommendation wins: latency 3x the target
    assert recommend(2, Sample(0, queue_depth=0, p99_s=0.15), POLICY) == 6
    # no metric yet: keep what runs
    assert recommend(3, Sample(0), POLICY) == 3


def test_scales_up_on_queue_growth_within_rate_limits() -> None:
    scaler = Autoscaler(POLICY)
    assert scaler.replicas == 2
    got = run(scaler, [Sample(15 * i, queue_depth=q) for i, q in enumerate([8, 200, 200, 200])])
    # 2 -> at most max(2 + 4 pods, 2 x 2) = 6 per 15 s period -> 10 (max_replicas clamps)
    assert got == [2, 6, 10, 10]


def test_rate_limit_counts_changes_inside_the_period() -> None:
    scaler = Autoscaler(POLICY)
    # two samples 5 s apart: the second may not add beyond the period's limit of 6
    assert run(scaler, [Sample(0, queue_depth=200), Sample(5, queue_depth=200)]) == [6, 6]
    assert scaler.decide(Sample(16, queue_depth=200)) == 10


def test_no_flapping_inside_the_down_window_then_down_after_it() -> None:
    scaler = Autoscaler(POLICY)
    scaler.decide(Sample(0, queue_depth=8 * 6))  # 6 replicas busy at target
    assert scaler.replicas == 6
    # load alternates quiet/busy every 10 s for 50 s: the replica count never moves
    series = [Sample(10 * i, queue_depth=0 if i % 2 else 48) for i in range(1, 6)]
    assert run(scaler, series) == [6] * 5
    # quiet from t=60 on: held at 6 until the last busy sample (t=40) leaves the 60 s window
    quiet = [Sample(t, queue_depth=0) for t in range(60, 121, 10)]
    got = run(scaler, quiet)
    assert got[:4] == [6, 6, 6, 6]  # t = 60, 70, 80, 90: t=40's 6 still inside the window
    assert got[4:] == [2, 2, 2]  # t = 100 on: min_replicas


def test_scale_up_window_ignores_a_single_spike() -> None:
    policy = ScalingPolicy(min_replicas=2, max_replicas=10, scale_up_window_s=30)
    scaler = Autoscaler(policy)
    got = run(
        scaler,
        [Sample(0, queue_depth=16), Sample(10, queue_depth=160), Sample(20, queue_depth=16)],
    )
    assert got == [2, 2, 2]  # the lowest recommendation of the last 30 s holds
    # sustained load: once every sample in the window asks for more, it scales
    got = run(scaler, [Sample(t, queue_depth=160) for t in (30, 40, 50, 60)])
    assert got[-1] > 2 and got[:2] == [2, 2]


def test_min_and_max_clamps() -> None:
    scaler = Autoscaler(POLICY)
    assert scaler.decide(Sample(0, queue_depth=0, p99_s=0.001)) == 2
    for t in range(15, 200, 15):
        scaler.decide(Sample(t, queue_depth=10_000, p99_s=5.0))
    assert scaler.replicas == 10


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="min_replicas"):
        ScalingPolicy(min_replicas=5, max_replicas=2)
    with pytest.raises(ValueError, match="at least one"):
        ScalingPolicy(target_queue_depth=None, target_p99_s=None)


def test_histogram_quantile_matches_prometheus_interpolation() -> None:
    buckets = [(0.01, 50.0), (0.1, 99.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.995, buckets) == pytest.approx(0.1 + 0.9 * 0.5)
    assert histogram_quantile(0.99, [(0.1, 0.0), (float("inf"), 0.0)]) is None


def test_instance_scaler_sets_instances_up_and_down(registry: Registry) -> None:
    registry.register("m", make_linear_onnx())
    metrics = GatewayMetrics()
    policy = instance_policy(cores=2)
    scaler = InstanceScaler(registry, policy)
    # busy: 20 requests queued for version 1, slow answers
    metrics.queue_depth.labels("m", "1").set(20)
    for _ in range(100):
        metrics.record_request("m", "1", "rest", 200, 0.2)
    depth, buckets = read_gateway_metrics(metrics.registry)
    assert depth == {("m", 1): 20.0}
    assert scaler.observe(0.0, depth, buckets) == {("m", 1): 2}
    assert registry.get_version("m", 1).config["instances"] == 2
    # never more than the cores
    assert scaler.observe(5.0, *read_gateway_metrics(metrics.registry)) == {}
    # quiet: no queue, no new requests; down only once the 120 s window has passed
    metrics.queue_depth.labels("m", "1").set(0)
    for t in (10.0, 60.0, 120.0):
        assert scaler.observe(t, *read_gateway_metrics(metrics.registry)) == {}
    assert scaler.observe(125.0, *read_gateway_metrics(metrics.registry)) == {("m", 1): 1}
    config = registry.get_version("m", 1).config
    assert config["instances"] == 1
    actors = {r.actor for r in registry.audit_records("m")}
    assert "autoscaler" in actors


def test_gateway_task_is_opt_in(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    class FakeGateway:  # only the two attributes the task reads
        def __init__(self) -> None:
            self.registry = registry
            self.metrics = GatewayMetrics()

    monkeypatch.delenv("ROOST_AUTOSCALE_INSTANCES", raising=False)
    assert not autoscale_enabled()

    async def scenario() -> None:
        assert start_instance_autoscaler(FakeGateway()) is None
        monkeypatch.setenv("ROOST_AUTOSCALE_INSTANCES", "true")
        task = start_instance_autoscaler(FakeGateway())
        assert task is not None and not task.done()
        await stop_instance_autoscaler(task)
        assert task.cancelled()

    asyncio.run(scenario())


def test_throughput_leads_before_saturation() -> None:
    policy = ScalingPolicy(min_replicas=2, max_replicas=20, target_rps=3000.0)
    # nothing queued and latency fine, but 12,000 req/s over 2 replicas: 4 replicas wanted
    assert recommend(2, Sample(0, queue_depth=0, p99_s=0.02, rps=12_000), policy) == 4
