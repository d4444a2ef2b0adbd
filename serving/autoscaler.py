"""How many replicas (or execution instances) a load needs: the HPA algorithm as tested code.

One :class:`ScalingPolicy` holds the knobs (``min_replicas``, ``max_replicas``, target queue
depth per replica, target p99, target GPU utilization, stabilization windows, rate limits). The
same policy object

- decides, in :class:`Autoscaler`, with Kubernetes' HorizontalPodAutoscaler semantics
  (``pkg/controller/podautoscaler``): per metric ``ceil(replicas * value / target)`` unless the
  ratio is within the 10 % tolerance; the largest recommendation of all metrics wins; a scale-up
  is held to the *lowest* recommendation of the scale-up window and a scale-down to the
  *highest* of the scale-down window (so one quiet sample never removes replicas and, with a
  window, one noisy sample never adds them); then the per-period rate limits and the min/max
  clamp;
- generates the KEDA ``ScaledObject`` (:func:`scaled_object`) committed under ``deploy/base/``
  (``python -m serving.autoscaler`` prints them; a test checks the committed files equal it);
- on one machine, scales a busy version's execution instances between 1 and the CPU count
  (:class:`InstanceScaler`, run by the gateway when ``ROOST_AUTOSCALE_INSTANCES=true``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from registry.tasks import cancel_and_wait

log = logging.getLogger(__name__)

ENABLE_ENV = "ROOST_AUTOSCALE_INSTANCES"
PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"


@dataclass(frozen=True)
class ScalingPolicy:
    """Autoscaling knobs of one workload (HPA names in the comments)."""

    min_replicas: int = 2
    max_replicas: int = 20
    target_queue_depth: float | None = 8.0
    """Queued requests per replica (an ``AverageValue`` metric: the total divided by replicas)."""
    target_p99_s: float | None = 0.05
    """p99 latency the fleet aims at (a ``Value`` metric), half the 100 ms SLO."""
    target_utilization: float | None = None
    """GPU utilization in percent (DCGM's 0-100 scale), a ``Value`` metric."""
    target_rps: float | None = None
    """Requests per second per replica (``AverageValue``): the leading signal. Queue depth and
    p99 only move once replicas are saturated; throughput moves as soon as traffic grows."""
    scale_up_window_s: int = 15
    """``behavior.scaleUp.stabilizationWindowSeconds``."""
    scale_down_window_s: int = 300
    """``behavior.scaleDown.stabilizationWindowSeconds`` (the HPA default)."""
    scale_up_pods: int = 4
    """Pods that may be added per period (HPA default policy; the larger of the two wins)."""
    scale_up_percent: int = 100
    """... or this percentage of the replicas at the start of the period."""
    scale_down_percent: int = 100
    """Percentage of replicas that may be removed per period (HPA default)."""
    period_s: int = 15
    """``periodSeconds`` of the rate-limit policies, and KEDA's polling interval."""
    tolerance: float = 0.1
    """No change while every metric is within this ratio of its target (HPA's default)."""

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.min_replicas <= self.max_replicas:
            problems.append("min_replicas/max_replicas: expected 1 <= min <= max")
        targets = (
            self.target_queue_depth,
            self.target_p99_s,
            self.target_utilization,
            self.target_rps,
        )
        if all(t is None for t in targets):
            problems.append("targets: expected at least one of queue depth, p99, utilization")
        if any(t is not None and t <= 0 for t in targets):
            problems.append("targets: expected > 0")
        if min(self.scale_up_window_s, self.scale_down_window_s) < 0 or self.period_s <= 0:
            problems.append("windows: expected >= 0 (period_s > 0)")
        if not 0 <= self.tolerance < 1:
            problems.append("tolerance: expected 0 to 1")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class Sample:
    """What the metrics said at time ``t`` (seconds); None: the metric has no value yet."""

    t: float
    queue_depth: float | None = None
    """Requests waiting, summed over every replica."""
    p99_s: float | None = None
    utilization: float | None = None
    rps: float | None = None
    """Requests per second, summed over every replica."""


def _by_ratio(replicas: int, value: float, target: float, tolerance: float) -> int:
    ratio = value / target
    if abs(ratio - 1.0) <= tolerance:
        return replicas
    return math.ceil(ratio * replicas)


def recommend(replicas: int, sample: Sample, policy: ScalingPolicy) -> int:
    """The raw HPA recommendation: the largest of every metric's, before windows and clamps."""
    recommendations = []
    if policy.target_queue_depth is not None and sample.queue_depth is not None:
        per_replica = sample.queue_depth / replicas
        recommendations.append(
            _by_ratio(replicas, per_replica, policy.target_queue_depth, policy.tolerance)
        )
    if policy.target_p99_s is not None and sample.p99_s is not None:
        recommendations.append(
            _by_ratio(replicas, sample.p99_s, policy.target_p99_s, policy.tolerance)
        )
    if policy.target_utilization is not None and sample.utilization is not None:
        recommendations.append(
            _by_ratio(replicas, sample.utilization, policy.target_utilization, policy.tolerance)
        )
    if policy.target_rps is not None and sample.rps is not None:
        recommendations.append(
            _by_ratio(replicas, sample.rps / replicas, policy.target_rps, policy.tolerance)
        )
    return max(recommendations, default=replicas)


@dataclass
class Autoscaler:
    """The HPA controller loop for one workload: feed it samples, it answers replica counts."""

    policy: ScalingPolicy
    replicas: int = 0
    _recommendations: list[tuple[float, int]] = field(default_factory=list)
    _changes: list[tuple[float, int]] = field(default_factory=list)  # (t, replicas added)

    def __post_init__(self) -> None:
        if self.replicas == 0:
            self.replicas = self.policy.min_replicas

    def decide(self, sample: Sample) -> int:
        """Desired replicas after ``sample``; also becomes :attr:`replicas`."""
        policy, now, current = self.policy, sample.t, self.replicas
        raw = recommend(current, sample, policy)
        up_cut, down_cut = now - policy.scale_up_window_s, now - policy.scale_down_window_s
        keep = max(policy.scale_up_window_s, policy.scale_down_window_s)
        self._recommendations = [r for r in self._recommendations if r[0] > now - keep]
        self._recommendations.append((now, raw))
        up = min(r for t, r in self._recommendations if t > up_cut or t == now)
        down = max(r for t, r in self._recommendations if t > down_cut or t == now)
        desired = min(max(current, up), down)
        # Rate limits against the replica count at the start of the period.
        self._changes = [c for c in self._changes if c[0] > now - policy.period_s]
        added = sum(d for _, d in self._changes if d > 0)
        removed = -sum(d for _, d in self._changes if d < 0)
        start_up, start_down = current - added, current + removed
        up_limit = max(
            start_up + policy.scale_up_pods,
            math.ceil(start_up * (1 + policy.scale_up_percent / 100)),
        )
        down_limit = math.floor(start_down * (1 - policy.scale_down_percent / 100))
        desired = min(desired, up_limit, policy.max_replicas)
        desired = max(desired, down_limit, policy.min_replicas)
        if desired != current:
            self._changes.append((now, desired - current))
        self.replicas = desired
        return desired


# -- KEDA ------------------------------------------------------------------------------------

GATEWAY_QUERIES: dict[str, str] = {
    "queue_depth": 'sum(roost_queue_depth{service="roost-gateway"})',
    "rps": 'sum(rate(roost_requests_total{service="roost-gateway"}[1m]))',
    "p99_s": (
        "histogram_quantile(0.99, sum by (le) "
        '(rate(roost_request_latency_seconds_bucket{service="roost-gateway"}[1m])))'
    ),
}
TRITON_QUERIES: dict[str, str] = {
    "queue_depth": 'sum(nv_inference_pending_request_count{service="roost-triton"})',
    "utilization": 'avg(DCGM_FI_DEV_GPU_UTIL{pod=~"roost-triton-.+"})',
}
# 3,000 req/s per pod: half the 5,930 req/s one gateway process serves with an experiment and a
# shadow on (benchmarks/RESULTS.md: 7,804 req/s REST JSON at c=64, x0.76 for traffic management).
# Half, and 4 pods at least, because a new pod takes a poll (15 s), the rate window and its
# start-up (~30 s) to help: benchmarks/autoscale_sim.py shows a 5-minute ramp to 10x served
# within target this way, and lower headroom failing it.
GATEWAY_POLICY = ScalingPolicy(min_replicas=4, max_replicas=20, target_rps=3000.0)
TRITON_POLICY = ScalingPolicy(
    min_replicas=1,
    max_replicas=8,
    target_queue_depth=16.0,
    target_p99_s=None,
    target_utilization=70.0,  # the requirements' ">70 % average GPU utilization"
    scale_up_window_s=60,  # a GPU pod costs minutes to start: no scale-up on one spike
)

_TRIGGERS = (  # knob, trigger name, KEDA metricType
    ("queue_depth", "target_queue_depth", "queue-depth", "AverageValue"),
    ("p99_s", "target_p99_s", "p99-latency", "Value"),
    ("utilization", "target_utilization", "gpu-utilization", "Value"),
    ("rps", "target_rps", "requests-per-second", "AverageValue"),
)


def _threshold(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def scaled_object(
    name: str,
    policy: ScalingPolicy,
    queries: Mapping[str, str],
    *,
    server: str = PROMETHEUS_URL,
) -> dict[str, Any]:
    """The KEDA ScaledObject (keda.sh/v1alpha1) scaling Deployment ``name`` by ``policy``."""
    triggers = []
    for metric, knob, trigger, metric_type in _TRIGGERS:
        target = getattr(policy, knob)
        if target is None:
            continue
        if metric not in queries:
            raise ValueError(f"queries: {knob} is set but no '{metric}' query was given")
        triggers.append(
            {
                "type": "prometheus",
                "name": trigger,
                "metricType": metric_type,
                "metadata": {
                    "serverAddress": server,
                    "query": queries[metric],
                    "threshold": _threshold(target),
                },
            }
        )
    behavior = {
        "scaleUp": {
            "stabilizationWindowSeconds": policy.scale_up_window_s,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Pods", "value": policy.scale_up_pods, "periodSeconds": policy.period_s},
                {
                    "type": "Percent",
                    "value": policy.scale_up_percent,
                    "periodSeconds": policy.period_s,
                },
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": policy.scale_down_window_s,
            "policies": [
                {
                    "type": "Percent",
                    "value": policy.scale_down_percent,
                    "periodSeconds": policy.period_s,
                }
            ],
        },
    }
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": name}},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "pollingInterval": policy.period_s,
            "cooldownPeriod": policy.scale_down_window_s,
            "minReplicaCount": policy.min_replicas,
            "maxReplicaCount": policy.max_replicas,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior}},
            "triggers": triggers,
        },
    }


def committed_scaled_objects() -> dict[str, dict[str, Any]]:
    """File name under ``deploy/base/`` -> the ScaledObject it must hold."""
    return {
        "gateway-scaledobject.yaml": scaled_object(
            "roost-gateway", GATEWAY_POLICY, GATEWAY_QUERIES
        ),
        "triton-scaledobject.yaml": scaled_object("roost-triton", TRITON_POLICY, TRITON_QUERIES),
    }


# -- one machine: execution instances of a version ---------------------------------------------


def instance_policy(cores: int | None = None) -> ScalingPolicy:
    """Instances of one version: 1 to the CPU count, 4 queued requests per instance."""
    return ScalingPolicy(
        min_replicas=1,
        max_replicas=max(1, cores if cores is not None else os.cpu_count() or 1),
        target_queue_depth=4.0,
        target_p99_s=GATEWAY_POLICY.target_p99_s,
        scale_up_window_s=10,
        scale_down_window_s=120,  # a change reloads the version: keep them rare
        scale_up_pods=1,
        scale_up_percent=0,
        period_s=5,
    )


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative ``(upper bound, count)`` pairs."""
    pairs = sorted(buckets)
    if not pairs or pairs[-1][1] <= 0:
        return None
    rank = q * pairs[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in pairs:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            width = count - lower_count
            share = (rank - lower_count) / width if width else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


VersionKey = tuple[str, int]


def read_gateway_metrics(
    registry: Any,
) -> tuple[dict[VersionKey, float], dict[VersionKey, dict[float, float]]]:
    """Queue depth and cumulative latency buckets (summed over variants) per version, read
    from a :class:`prometheus_client.CollectorRegistry` holding :class:`GatewayMetrics`."""
    depth: dict[VersionKey, float] = {}
    buckets: dict[VersionKey, dict[float, float]] = {}
    for family in registry.collect():
        if family.name not in ("roost_queue_depth", "roost_request_latency_seconds"):
            continue
        for s in family.samples:
            try:
                key = (s.labels["model"], int(s.labels["version"]))
            except (KeyError, ValueError):
                continue
            if s.name == "roost_queue_depth":
                depth[key] = depth.get(key, 0.0) + s.value
            elif s.name == "roost_request_latency_seconds_bucket":
                per = buckets.setdefault(key, {})
                bound = float(s.labels["le"])
                per[bound] = per.get(bound, 0.0) + s.value
    return depth, buckets


class InstanceScaler:
    """Sets ``instances`` of busy versions through :meth:`Registry.set_config` (the gateway
    then reloads the version with that many sessions); one :class:`Autoscaler` per version."""

    def __init__(self, registry: Any, policy: ScalingPolicy | None = None) -> None:
        self.registry = registry
        self.policy = policy or instance_policy()
        self._scalers: dict[VersionKey, Autoscaler] = {}
        self._last_buckets: dict[VersionKey, dict[float, float]] = {}

    def observe(
        self,
        t: float,
        depth: Mapping[VersionKey, float],
        buckets: Mapping[VersionKey, Mapping[float, float]],
    ) -> dict[VersionKey, int]:
        """Decide every version seen in the metrics; returns the versions whose count changed."""
        changed: dict[VersionKey, int] = {}
        for key in sorted(set(depth) | set(buckets)):
            now = dict(buckets.get(key, {}))
            before = self._last_buckets.get(key, {})
            self._last_buckets[key] = now
            delta = [(b, c - before.get(b, 0.0)) for b, c in now.items()]
            sample = Sample(t, depth.get(key), histogram_quantile(0.99, delta))
            scaler = self._scalers.get(key)
            if scaler is None:
                current = int(self.registry.get_version(*key).config.get("instances", 1))
                scaler = self._scalers[key] = Autoscaler(self.policy, replicas=current)
            before_count = scaler.replicas
            wanted = scaler.decide(sample)
            if wanted != before_count:
                self.registry.set_config(
                    key[0],
                    key[1],
                    {"instances": wanted},
                    reason=f"autoscale instances {before_count} -> {wanted}",
                    actor="autoscaler",
                )
                changed[key] = wanted
        return changed

    async def run(self, metrics_registry: Any, interval_s: float | None = None) -> None:
        """Every ``period_s``: read the metrics, decide, write changes (until cancelled)."""
        loop = asyncio.get_running_loop()
        interval = interval_s if interval_s is not None else float(self.policy.period_s)
        while True:
            await asyncio.sleep(interval)
            depth, buckets = read_gateway_metrics(metrics_registry)
            try:
                changed = await asyncio.to_thread(self.observe, loop.time(), depth, buckets)
            except Exception:  # a registry hiccup must not end the loop
                log.exception("instance autoscaler: tick failed")
                continue
            for (model, version), count in changed.items():
                log.info("autoscaler: %s v%d instances -> %d", model, version, count)


def autoscale_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(ENABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def start_instance_autoscaler(gateway: Any) -> asyncio.Task[None] | None:
    """The gateway's opt-in background task (``ROOST_AUTOSCALE_INSTANCES=true``), or None."""
    if not autoscale_enabled():
        return None
    scaler = InstanceScaler(gateway.registry)
    return asyncio.create_task(scaler.run(gateway.metrics.registry), name="instance-autoscaler")


async def stop_instance_autoscaler(task: asyncio.Task[None] | None) -> None:
    await cancel_and_wait(task)


def main(argv: list[str] | None = None) -> int:
    """Print the committed ScaledObjects (``python -m serving.autoscaler [--write DIR]``)."""
    import yaml

    args = sys.argv[1:] if argv is None else argv
    for name, obj in committed_scaled_objects().items():
        text = "# Generated by `python -m serving.autoscaler --write deploy/base`; do not edit.\n"
        text += yaml.safe_dump(obj, sort_keys=False)
        if args[:1] == ["--write"] and len(args) == 2:
            with open(os.path.join(args[1], name), "w", encoding="utf-8") as f:
                f.write(text)
        else:
            print(f"---\n# {name}\n{text}", end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
