"""serving/metrics_share.py: merging several processes' figures into one ``/metrics``.

The processes here are real :class:`GatewayMetrics` registries in this test process, turned into
snapshots as each worker's socket or file delivers them; tests/e2e/test_serve_workers.py runs
the same over two real worker processes.
"""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from serving.breaker import BreakerState
from serving.metrics import GatewayMetrics
from serving.metrics_share import Snapshot, merged_registry

Labels = tuple[tuple[str, str], ...]


def exposed(processes: list[tuple[int, bool, Snapshot]]) -> dict[tuple[str, Labels], float]:
    text = generate_latest(merged_registry(processes)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_and_histograms_add_up_over_live_and_dead_processes() -> None:
    a, b, dead = GatewayMetrics(), GatewayMetrics(), GatewayMetrics()
    for _ in range(3):
        a.record_request("m", "1", "rest", 200, 0.002)
    b.record_request("m", "1", "rest", 200, 0.2)
    b.record_request("m", "1", "rest", 503, 0.0)
    dead.record_request("m", "1", "grpc", 200, 0.002)
    out = exposed([(1, True, a.figures()), (2, True, b.figures()), (3, False, dead.figures())])
    ok = ("model", "m"), ("protocol", "rest"), ("status", "200"), ("variant", ""), ("version", "1")
    assert out[("roost_requests_total", ok)] == 4
    assert out[("roost_requests_total", tuple(
        (k, "503" if k == "status" else v) for k, v in ok))] == 1
    grpc = tuple((k, "grpc" if k == "protocol" else v) for k, v in ok)
    assert out[("roost_requests_total", grpc)] == 1  # a dead worker's counts are kept
    latency = ("model", "m"), ("variant", ""), ("version", "1")
    assert out[("roost_request_latency_seconds_count", latency)] == 5
    bucket = tuple(sorted([*latency, ("le", "0.0025")]))
    assert out[("roost_request_latency_seconds_bucket", bucket)] == 4  # cumulative, summed
    assert not any(name.endswith("_created") for name, _ in out)


def test_gauges_combine_as_their_multiprocess_mode_says() -> None:
    a, b, dead = GatewayMetrics(), GatewayMetrics(), GatewayMetrics()
    a.batch_observer("m", "1")(1, 0.0, 0.0, 3)  # queue depth 3: livesum
    b.batch_observer("m", "1")(1, 0.0, 0.0, 4)
    dead.batch_observer("m", "1")(1, 0.0, 0.0, 50)  # a dead worker's queue is gone
    a.model_loaded("m", "1", 0.5)  # load time: max over all, dead ones too
    dead.model_loaded("m", "1", 2.0)
    a.breaker_observer("m", "1")  # 0: closed
    opened = b.breaker_observer("m", "1")
    opened(BreakerState.OPEN, True)  # livemax: open in any live worker
    out = exposed([(1, True, a.figures()), (2, True, b.figures()), (3, False, dead.figures())])
    version = ("model", "m"), ("version", "1")
    assert out[("roost_queue_depth", version)] == 7
    assert out[("roost_model_load_seconds", version)] == 2.0
    assert out[("roost_breaker_open", version)] == 1
    assert out[("roost_breaker_trips_total", version)] == 1
