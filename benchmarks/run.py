"""Roost's serving benchmark: Roost next to the floor and raw ONNX Runtime, all in one run.

    .venv/bin/python benchmarks/run.py [all|serving|batching|burst] [options]

``serving`` (the demo breast-cancer model, one row per request): raw ONNX Runtime in-process per
call; then the floor (a bare FastAPI endpoint calling one session, ``floor_app.py``) and Roost
(``roost serve``: prediction logging, metrics and gRPC on, as shipped) loaded with wrk at
concurrency 1, 8 and 64 over REST JSON; Roost also over REST with Triton's binary tensor
extension (wrk) and over gRPC (``grpc_load.py``, closed loop); then floor and Roost again with
``--compare-workers`` processes each (default 2) at concurrency 64.

``batching``: a wide MLP trained on scikit-learn's digits (``digits_model.py``) is registered,
validated and deployed as ``digits-mlp`` into the same Roost, and loaded at concurrency 64 with
dynamic batching off (``max_batch_size: 0``), on (``max_batch_size: 32``, no delay) and on with a
1 ms delay and preferred sizes; the gateway reloads the version on each config change.

``burst``: 10x the sustainable rate of breast-cancer at concurrency 64 (Roost REST JSON's req/s
from ``serving``, or measured first) is offered open loop for 10 s (``burst_load.py``, up to 1,000
connections) with the model's shipped queue knobs and with a small queue and deadline; every
answer is counted by status, the server's RSS is sampled, and the answers' latency is compared
with the deadline (client-side, and server-side from the prediction log).

``all`` (the default) runs the three in that order against one Roost and one floor process, then
the ``--compare-workers`` pair. Everything is measured on this machine, in this run: compare Roost
with the floor of the same run only. Prints markdown tables and writes ``<out>/results.json``
(``results.md``, and a timestamped copy of the JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    BENCH_DIR,
    BODY_FILE,
    HEADER_LENGTH,
    INFER_PATH,
    MODEL,
    REPO_ROOT,
    WRK_MISSING,
    Target,
    binary_body,
    build_targets,
    count_logged_rows,
    decode_binary_response,
    http,
    loadavg,
    log,
    logged_rows,
    machine_info,
    materialize_model,
    measure_in_process,
    metric_value,
    metrics_text,
    run_burst,
    run_grpc,
    run_wrk,
    scan_log,
    source_fingerprint,
    start,
    stop,
    wait_ready,
)

__all__ = ["BODY_FILE", "INFER_PATH", "MODEL", "main", "materialize_model"]  # asgi_profile.py

PROTOCOLS = {"json": "REST JSON", "binary": "REST binary", "grpc": "gRPC"}
BATCHING_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("off (max_batch_size 0)",
     {"max_batch_size": 0, "max_queue_delay_ms": None, "preferred_batch_sizes": None}),
    ("on (max_batch_size 32, delay 0)",
     {"max_batch_size": 32, "max_queue_delay_ms": None, "preferred_batch_sizes": None}),
    ("on (max_batch_size 32, delay 1 ms, preferred 16/32)",
     {"max_batch_size": 32, "max_queue_delay_ms": 1, "preferred_batch_sizes": [16, 32]}),
]
BURST_KNOBS = ("max_queue_size", "queue_timeout_ms")


# ------------------------------------------------------------------------------------------
# the run


class Bench:
    """One run: the temporary ROOST_HOME, the servers, and the report being filled in."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.home = Path(tempfile.mkdtemp(prefix="roost-bench-"))
        self.work = self.home / "bench"
        self.work.mkdir(parents=True)
        self.report: dict[str, Any] = {}
        self.targets: list[Target] = []
        self.stopped: list[Target] = []
        self.roost_sent = 0  # requests Roost was sent and the clients counted
        self.roost_slack = 0  # requests that may have been in flight when a client stopped
        self.logged_before = 0

    # -- setup ------------------------------------------------------------------------------

    def setup(self) -> None:
        log(f"materializing {MODEL} into {self.home} ...")
        self.model = materialize_model(self.home)
        self.model_path = self.work / "model.onnx"
        self.model_path.write_bytes(self.model)
        self.body = BODY_FILE.read_bytes().strip()
        self.body_file = self.work / "body.json"
        self.body_file.write_bytes(self.body)
        raw, self.binary_header_length = binary_body(self.body)
        self.binary_file = self.work / "body.bin"
        self.binary_file.write_bytes(raw)
        self.report["roost"] = roost_settings_info(self.home)
        self.report["bodies"] = {
            "json": {"file": "benchmarks/body.json", "bytes": len(self.body)},
            "binary": {
                "bytes": len(raw),
                HEADER_LENGTH: self.binary_header_length,
                "json_header": raw[: self.binary_header_length].decode(),
            },
        }

    def in_process(self) -> None:
        log(f"timing in-process calls ({self.args.calls} each) ...")
        self.report["in_process_us"] = measure_in_process(
            self.home, self.model, self.body, self.args.calls
        )

    def start_servers(self, workers: int) -> tuple[Target, Target]:
        floor, roost = build_targets(self.home, self.model_path, ["floor", "roost"], workers)
        for target in (floor, roost):
            start(target, self.work)
            self.targets.append(target)
        for target in (floor, roost):
            wait_ready(target)
        self.check_answers(floor, roost)
        self.report.setdefault("targets", []).extend(
            {"label": t.label, "description": t.description, "argv": t.argv, "env": t.env}
            for t in (floor, roost)
        )
        return floor, roost

    def stop_servers(self, *targets: Target) -> None:
        for target in targets:
            stop(target)
            self.stopped.append(target)

    def check_answers(self, floor: Target, roost: Target) -> None:
        """Every server and protocol answers the body, and with the same probabilities."""
        samples = self.report.setdefault("sample_responses", {})
        answers = {}
        for target in (floor, roost):
            status, _, answer = http("POST", target.url, self.body)
            if status != 200:
                raise RuntimeError(f"{target.label} answered {status}: {answer[:500]!r}")
            samples[target.label] = parsed = json.loads(answer)
            answers[target.label] = {o["name"]: o["data"] for o in parsed["outputs"]}
        raw = self.binary_file.read_bytes()
        status, headers, answer = http(
            "POST", roost.url, raw,
            {"Content-Type": "application/octet-stream",
             HEADER_LENGTH: str(self.binary_header_length)},
        )
        length = {k.lower(): v for k, v in headers.items()}.get(HEADER_LENGTH.lower())
        if status != 200 or length is None:
            raise RuntimeError(f"{roost.label} binary answered {status}: {answer[:500]!r}")
        answers[f"{roost.label} binary"] = decode_binary_response(answer, int(length))
        samples[f"{roost.label} binary"] = {"bytes": len(answer), HEADER_LENGTH: int(length)}
        self.roost_sent += 2
        self.reference = answers[floor.label]
        for label, outputs in answers.items():
            self.check_same(label, outputs)

    def check_same(self, label: str, outputs: dict[str, Any]) -> None:
        for name, values in self.reference.items():
            got = outputs.get(name)
            if got is None or any(abs(a - b) > 1e-5 for a, b in zip(got, values, strict=True)):
                raise RuntimeError(f"{label} answered {name}={got}, the floor {values}")

    # -- load -------------------------------------------------------------------------------

    def load(self, target: Target, protocol: str, concurrency: int, duration: float,
             *, model: str = MODEL, body_file: Path | None = None) -> dict[str, Any]:
        log(f"{target.label} {protocol} -c{concurrency} {duration:g}s ...")
        url = target.infer_url(model)
        if protocol == "gRPC":
            result = run_grpc(target, concurrency, duration, body_file or self.body_file, model)
            if model == MODEL:
                self.check_same(f"{target.label} gRPC", {
                    o["name"]: o["data"] for o in result["sample_response"]["outputs"]
                })
            if target.name == "roost":
                self.roost_sent += result["sent_total"]
            return result
        if protocol == "REST binary":
            result = run_wrk(target, concurrency, duration, self.binary_file, url=url,
                             protocol=protocol, header_length=self.binary_header_length)
        else:
            result = run_wrk(target, concurrency, duration, body_file or self.body_file,
                             url=url, protocol=protocol)
        if target.name == "roost":
            self.roost_sent += result.get("requests", 0)
            self.roost_slack += concurrency
        return result

    def warm_up(self, target: Target, protocols: list[str]) -> None:
        if self.args.warmup <= 0:
            return
        for protocol in protocols:
            if protocol != "gRPC":  # grpc_load.py warms up before every measured run
                self.report.setdefault("warmups", []).append(
                    self.load(target, protocol, 64, self.args.warmup)
                )

    # -- phases -----------------------------------------------------------------------------

    def serving(self, floor: Target, roost: Target) -> None:
        protocols = [PROTOCOLS[p] for p in self.args.protocols]
        self.warm_up(floor, ["REST JSON"])
        self.warm_up(roost, [p for p in protocols if p != "gRPC"])
        runs: list[dict[str, Any]] = self.report.setdefault("serving", [])
        for concurrency in self.args.concurrency:
            # floor, then Roost's protocols: drifting background load hits them all alike
            runs.append(self.load(floor, "REST JSON", concurrency, self.args.duration))
            for protocol in protocols:
                runs.append(self.load(roost, protocol, concurrency, self.args.duration))

    def compare_workers(self) -> None:
        workers = self.args.compare_workers
        concurrency = max(self.args.concurrency)
        log(f"starting floor and Roost with {workers} worker processes each ...")
        floor, roost = self.start_servers(workers)
        try:
            self.warm_up(floor, ["REST JSON"])
            self.warm_up(roost, ["REST JSON"])
            runs: list[dict[str, Any]] = self.report.setdefault("workers", [])
            for target in (floor, roost):
                runs.append(self.load(target, "REST JSON", concurrency, self.args.duration))
        finally:
            self.stop_servers(floor, roost)

    def batching(self, roost: Target) -> None:
        from digits_model import MODEL_NAME, request_body, time_onnxruntime, train_digits_mlp

        args = self.args
        log(f"training the digits MLP {args.digits_hidden} ...")
        data, facts = train_digits_mlp(tuple(args.digits_hidden), args.digits_iter)
        body_file = self.work / "digits.json"
        body_file.write_bytes(request_body(facts.pop("sample_row")))
        facts["onnxruntime_us"] = time_onnxruntime(data, json.loads(body_file.read_bytes())[
            "inputs"][0]["data"])
        section: dict[str, Any] = {"model": MODEL_NAME, "facts": facts, "runs": []}
        self.report["batching"] = section
        version = register_and_deploy(self.home, MODEL_NAME, data)
        section["version"] = version
        wait_answers(roost, MODEL_NAME, body_file.read_bytes())
        self.roost_sent += 1
        for label, config in BATCHING_CONFIGS:
            loaded = load_gauge(roost, MODEL_NAME)
            if set_config(self.home, MODEL_NAME, version, config):
                wait_reload(roost, MODEL_NAME, loaded)
            self.load(roost, "REST JSON", 64, args.warmup, model=MODEL_NAME, body_file=body_file)
            before = metrics_text(roost)
            run = self.load(roost, "REST JSON", args.batching_concurrency, args.duration,
                            model=MODEL_NAME, body_file=body_file)
            after = metrics_text(roost)
            run["config_label"] = label
            run["config"] = {k: v for k, v in config.items() if v is not None}
            run["batch_stats"] = batch_stats(before, after, MODEL_NAME)
            section["runs"].append(run)

    def burst(self, roost: Target) -> None:
        args = self.args
        sustainable = next(
            (r["rps"] for r in self.report.get("serving", [])
             if r["server"] == "roost" and r["protocol"] == "REST JSON"
             and r["concurrency"] == 64 and r["workers"] == roost.workers),
            None,
        )
        section: dict[str, Any] = {"runs": []}
        self.report["burst"] = section
        if sustainable is None:
            self.warm_up(roost, ["REST JSON"])
            run = self.load(roost, "REST JSON", 64, args.duration)
            section["sustainable_run"] = run
            sustainable = run["rps"]
        rate = args.burst_rate or args.burst_factor * sustainable
        section.update(sustainable_rps=sustainable, offered_rps=rate, factor=rate / sustainable)
        info = roost_settings_info(self.home)
        version = int(info["version"])
        configs = [
            ("shipped knobs", dict.fromkeys(BURST_KNOBS)),
            (f"small queue ({args.burst_queue}, {args.burst_timeout_ms:g} ms)",
             {"max_queue_size": args.burst_queue, "queue_timeout_ms": args.burst_timeout_ms}),
        ]
        try:
            for n, (label, knobs) in enumerate(configs):
                loaded = load_gauge(roost, MODEL)
                if set_config(self.home, MODEL, version, knobs):
                    wait_reload(roost, MODEL, loaded)
                effective = roost_settings_info(self.home)["effective_config"]
                deadline_ms = float(effective["queue_timeout_ms"])
                tag = f"burst-{n}-{int(time.time())}"
                log(f"burst: {label}, {rate:,.0f} req/s offered for {args.burst_duration:g}s ...")
                result = run_burst(
                    roost, roost.url, self.body_file, rate, args.burst_duration,
                    args.burst_connections, args.burst_drain, tag,
                )
                self.roost_sent += result["answered"]
                self.roost_slack += result["no_answer"] + sum(result["socket_errors"].values())
                result["server_log"] = wait_logged(self.home, tag, result["answered"])
                result.update(
                    config_label=label,
                    knobs={k: effective[k] for k in BURST_KNOBS},
                    deadline_ms=deadline_ms,
                    verdict=burst_verdict(result, deadline_ms, args.deadline_margin_ms),
                )
                section["runs"].append(result)
                time.sleep(1)
        finally:
            set_config(self.home, MODEL, version, dict.fromkeys(BURST_KNOBS))

    # -- end --------------------------------------------------------------------------------

    def finish(self) -> None:
        for target in self.targets:
            if target not in self.stopped:
                stop(target)
        self.report["machine"]["loadavg_end"] = loadavg()
        self.report["server_logs"] = {t.label: scan_log(t, self.args.out) for t in self.targets}
        if any(t.name == "roost" for t in self.targets):
            with contextlib.suppress(Exception):
                rows = count_logged_rows(self.home) - self.logged_before
                self.report["roost_prediction_log"] = {
                    "rows_logged": rows,
                    "requests_counted_by_clients": self.roost_sent,
                    "may_have_been_in_flight_at_client_stop": self.roost_slack,
                    "consistent": 0 <= rows - self.roost_sent <= self.roost_slack,
                }
        if self.args.keep_home:
            log(f"kept ROOST_HOME at {self.home}")
        else:
            shutil.rmtree(self.home, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# registry helpers


def roost_settings_info(home: Path) -> dict[str, Any]:
    """The gateway settings and breast-cancer's version and serving config."""
    from registry import Registry, RoostSettings, ServingConfig

    settings = RoostSettings(home=home)
    info: dict[str, Any] = {
        "prediction_logging": "on (always on in Roost: Parquet, zstd, fsync)",
        "metrics": "on (always on in Roost: Prometheus, /metrics)",
        "log_durability": getattr(settings, "log_durability", None),
        "log_flush_rows": settings.log_flush_rows,
        "log_flush_interval_s": settings.log_flush_interval_s,
        "intra_op_threads": settings.intra_op_threads,
    }
    registry = Registry.from_settings(settings)
    try:
        version = next(v for v in registry.served_versions() if v.model == MODEL)
        info["version"] = version.version
        info["version_config"] = dict(version.config)
        info["effective_config"] = ServingConfig.from_config(version.config).to_dict()
    finally:
        registry.close()
    return info


def register_and_deploy(home: Path, model: str, data: bytes) -> int:
    """register -> VALIDATING -> VALIDATED -> deploy, as ``roost register/transition/deploy``."""
    from registry import Registry, RoostSettings, State

    registry = Registry.from_settings(RoostSettings(home=home))
    try:
        info = registry.register_version(
            model, data, registered_by="benchmark", description="digits MLP for batching"
        )
        if info.state == State.REGISTERED:
            for state in (State.VALIDATING, State.VALIDATED):
                registry.transition(model, info.version, state, reason="benchmark")
        registry.deploy(model, info.version, reason="benchmark")
        return int(info.version)
    finally:
        registry.close()


def set_config(home: Path, model: str, version: int, changes: dict[str, Any]) -> bool:
    """``roost config MODEL VERSION --set k=v / --unset k``; True when the config changed."""
    from registry import Registry, RoostSettings

    registry = Registry.from_settings(RoostSettings(home=home))
    try:
        before = dict(registry.get_version(model, version).config)
        after = {**before, **changes}
        after = {k: v for k, v in after.items() if v is not None}
        if after == before:
            return False
        registry.set_config(model, version, changes, reason="benchmark")
        return True
    finally:
        registry.close()


def load_gauge(roost: Target, model: str) -> float | None:
    """``roost_model_load_seconds`` of ``model``: changes whenever the gateway reloads it."""
    return metric_value(metrics_text(roost), "roost_model_load_seconds", model)


def wait_reload(roost: Target, model: str, start_value: float | None,
                timeout_s: float = 30) -> None:
    """Wait until the gateway has reloaded ``model`` (its load-time gauge changes)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
        value = load_gauge(roost, model)
        if value is not None and value != start_value:
            time.sleep(0.5)  # the old version's batcher drains what it had
            return
    log(f"warning: no reload of {model} seen within {timeout_s:g}s; going on")


def wait_answers(roost: Target, model: str, body: bytes, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, _, answer = http("POST", roost.infer_url(model), body)
        if status == 200:
            return
        time.sleep(0.3)
    raise RuntimeError(f"{model} is not served after {timeout_s:g}s: {status} {answer[:300]!r}")


def wait_logged(home: Path, tag: str, expected: int, timeout_s: float = 15) -> dict[str, Any]:
    """The prediction log's rows for ``tag`` once they are all flushed (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    rows: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            rows = logged_rows(home, tag)
            if rows["rows"] >= expected:
                break
        time.sleep(0.5)
    return rows


def batch_stats(before: str, after: str, model: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, key in (("roost_batch_size", "rows"), ("roost_inference_seconds", "seconds")):
        values = [
            (metric_value(after, f"{name}_{part}", model) or 0.0)
            - (metric_value(before, f"{name}_{part}", model) or 0.0)
            for part in ("sum", "count")
        ]
        out["batches"] = values[1]
        out[f"mean_{key}_per_batch"] = values[0] / values[1] if values[1] else None
    return out


def burst_verdict(result: dict[str, Any], deadline_ms: float, margin_ms: float) -> dict[str, Any]:
    statuses = {int(k): v for k, v in result["statuses"].items()}
    other = sum(v for k, v in statuses.items() if k not in (200, 503, 504))
    socket_errors = sum(result["socket_errors"].values())
    rss = result["rss"]
    growth = (rss["max_second_half_mib"] or 0) - (rss["max_first_half_mib"] or 0)
    ok_latency = result["latency_from_send_ms"].get("200", {}).get("p99")
    server_latency = result["server_log"].get("latency_ms", {}).get("200", {}).get("p99")
    limit = deadline_ms + margin_ms
    return {
        "every_request_answered": result["no_answer"] == 0 and socket_errors == 0 and not other,
        "memory_bounded": growth <= 10.0,
        "rss_growth_second_half_mib": growth,
        "accepted_p99_ms_client": ok_latency,
        "accepted_p99_ms_server": server_latency,
        "deadline_limit_ms": limit,
        "accepted_meet_deadline_client": ok_latency is not None and ok_latency <= limit,
        "accepted_meet_deadline_server": server_latency is not None and server_latency <= limit,
    }


# ------------------------------------------------------------------------------------------
# report


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.0f} µs" if value < 1 else f"{value:.2f} ms"


def _row_label(run: dict[str, Any]) -> str:
    return f"{run['server']} · {run['protocol']}"


def _errors(run: dict[str, Any]) -> str:
    return f"{run.get('non_2xx', 0)} / {run.get('errors', 0)}"


def render(report: dict[str, Any]) -> str:
    out: list[str] = []
    serving = report.get("serving", [])
    head = (
        "| server · protocol | workers | concurrency | req/s | p50 | p99 | p99.9 | non-2xx / "
        "socket errors | server CPU µs/req | server cores | client cores | other load |"
    )
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"

    def line(run: dict[str, Any], label: str | None = None) -> str:
        lat = run["latency_ms"]
        return (
            f"| {label or _row_label(run)} | {run['workers']} | {run['concurrency']} "
            f"| {run['rps']:,.0f} | {_ms(lat.get('p50'))} | {_ms(lat.get('p99'))} "
            f"| {_ms(lat.get('p99.9'))} | {_errors(run)} | {run['server_cpu_us_per_req']:.0f} "
            f"| {run['server_cpu_cores']:.2f} | {run['client_cpu_cores']:.2f} "
            f"| {run['other_cpu_cores']:.2f} |"
        )

    if serving:
        out += ["### Serving: breast-cancer, one row per request", "", head, rule]
        out += [line(run) for run in serving]
        out += ["", "| concurrency | row | req/s vs floor | p99 vs floor |", "|---:|---|---:|---:|"]
        for run in serving:
            floor = _find(serving, "floor", "REST JSON", run["concurrency"], run["workers"])
            if run["server"] == "roost" and floor:
                out.append(
                    f"| {run['concurrency']} | {_row_label(run)} "
                    f"| {run['rps'] / floor['rps']:.2f} "
                    f"| {run['latency_ms']['p99'] / floor['latency_ms']['p99']:.2f} |"
                )
    workers = report.get("workers", [])
    if workers:
        out += ["", f"### {workers[0]['workers']} worker processes each", "", head, rule]
        out += [line(run) for run in workers]
    ip = report.get("in_process_us")
    if ip:
        out += ["", "| in-process, one row (no HTTP) | median µs | p99 µs |", "|---|---:|---:|"]
        labels = {
            "onnxruntime_run": "ONNX Runtime `session.run`",
            "onnxruntime_run_oip_json": "... with OIP JSON parse and dump (the floor's handler)",
            "roost_dataplane": "Roost data plane (`DataPlane.infer` + response encoding)",
        }
        for key, label in labels.items():
            if key in ip:
                out.append(f"| {label} | {ip[key]['median_us']:.1f} | {ip[key]['p99_us']:.1f} |")
        if "roost_dataplane_error" in ip:
            out.append(f"| Roost data plane: not measured ({ip['roost_dataplane_error']}) | | |")
    out += _render_batching(report.get("batching"))
    out += _render_burst(report.get("burst"))
    targets = evaluate_targets(report)
    if targets:
        report["targets_evaluated"] = targets
        out += ["", "### Targets", "", "| target | measured | met |", "|---|---|---|"]
        out += [f"| {t['target']} | {t['measured']} | {t['met']} |" for t in targets]
    measured = [
        r for key in ("serving", "workers") for r in report.get(key, [])
    ] + report.get("batching", {}).get("runs", []) + report.get("burst", {}).get("runs", [])
    if measured:
        other = [r["other_cpu_cores"] for r in measured]
        out += ["", f"- other load during the {len(other)} measured runs: mean "
                f"{sum(other) / len(other):.2f} cores, max {max(other):.2f} (2 vCPUs; above "
                "about 0.1 the run competed with other work)"]
    logs = report.get("server_logs", {})
    if logs:
        out += [
            f"- {name} log: {info.get('tracebacks', 0)} tracebacks "
            f"{info.get('exception_types') or ''}".rstrip()
            for name, info in logs.items()
        ]
    plog = report.get("roost_prediction_log")
    if plog:
        out.append(
            f"- Roost prediction log: {plog['rows_logged']:,} rows for "
            f"{plog['requests_counted_by_clients']:,} requests the clients counted (up to "
            f"{plog['may_have_been_in_flight_at_client_stop']:,} more may have been in flight "
            f"when a client stopped): {'consistent' if plog['consistent'] else 'INCONSISTENT'}"
        )
    return "\n".join(out)


def _render_batching(section: dict[str, Any] | None) -> list[str]:
    if not section or not section.get("runs"):
        return []
    facts = section["facts"]
    ort_us = facts["onnxruntime_us"]
    out = [
        "",
        f"### Dynamic batching: {section['model']} (MLP {facts['hidden_layer_sizes']}, "
        f"{facts['parameters']:,} parameters, test accuracy {facts['test_accuracy']:.3f})",
        "",
        f"ONNX Runtime in-process: {ort_us['1']['median_us_per_call']:.0f} µs for one row, "
        f"{ort_us['32']['median_us_per_call']:.0f} µs for 32 rows "
        f"({ort_us['32']['median_us_per_row']:.0f} µs per row).",
        "",
        "| batching | concurrency | req/s | p50 | p99 | rows per model call | model ms per call "
        "| non-2xx / socket errors | server CPU µs/req | other load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in section["runs"]:
        lat, stats = run["latency_ms"], run["batch_stats"]
        rows = stats.get("mean_rows_per_batch")
        seconds = stats.get("mean_seconds_per_batch")
        out.append(
            f"| {run['config_label']} | {run['concurrency']} | {run['rps']:,.0f} "
            f"| {_ms(lat.get('p50'))} | {_ms(lat.get('p99'))} "
            f"| {rows:.1f} | {seconds * 1000:.2f} | {_errors(run)} "
            f"| {run['server_cpu_us_per_req']:.0f} | {run['other_cpu_cores']:.2f} |"
            if rows is not None and seconds is not None else
            f"| {run['config_label']} | {run['concurrency']} | {run['rps']:,.0f} "
            f"| {_ms(lat.get('p50'))} | {_ms(lat.get('p99'))} | – | – | {_errors(run)} "
            f"| {run['server_cpu_us_per_req']:.0f} | {run['other_cpu_cores']:.2f} |"
        )
    off = section["runs"][0]
    out += ["", "| batching on vs off | req/s ratio | p99 ratio |", "|---|---:|---:|"]
    for run in section["runs"][1:]:
        out.append(
            f"| {run['config_label']} | {run['rps'] / off['rps']:.2f} "
            f"| {run['latency_ms']['p99'] / off['latency_ms']['p99']:.2f} |"
        )
    return out


def _render_burst(section: dict[str, Any] | None) -> list[str]:
    if not section or not section.get("runs"):
        return []
    out = [
        "",
        f"### Burst: breast-cancer, {section['offered_rps']:,.0f} req/s offered "
        f"({section['factor']:.0f}x the {section['sustainable_rps']:,.0f} req/s sustained at "
        "concurrency 64), open loop",
        "",
        "| queue knobs | sent req/s | answered | 200 | 503 | 504 | other | socket errors "
        "| no answer | not sent (client pool full) | 200 p99 client | 200 p99 server "
        "| 503 p99 client | RSS idle → max MiB | client cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in section["runs"]:
        st = run["statuses"]
        other = sum(v for k, v in st.items() if k not in ("200", "503", "504"))
        rss = run["rss"]
        lat = run["latency_from_send_ms"]
        out.append(
            f"| {run['config_label']} | {run['sent_rps']:,.0f} | {run['answered']:,} "
            f"| {st.get('200', 0):,} | {st.get('503', 0):,} | {st.get('504', 0):,} | {other} "
            f"| {sum(run['socket_errors'].values())} | {run['no_answer']} "
            f"| {run['not_sent']:,} | {_ms(lat.get('200', {}).get('p99'))} "
            f"| {_ms(run['verdict']['accepted_p99_ms_server'])} "
            f"| {_ms(lat.get('503', {}).get('p99'))} "
            f"| {rss['idle_mib']:.0f} → {rss['max_burst_mib'] or 0:.0f} "
            f"| {run['client_cpu_cores']:.2f} |"
        )
    return out


def _find(runs: list[dict[str, Any]], server: str, protocol: str, concurrency: int,
          workers: int) -> dict[str, Any] | None:
    for run in runs:
        if (run["server"], run["protocol"], run["concurrency"], run["workers"]) == (
            server, protocol, concurrency, workers
        ):
            return run
    return None


def _yes(flag: bool) -> str:
    return "met" if flag else "**not met**"


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, str]]:
    """The issue's targets against this run's figures."""
    out: list[dict[str, str]] = []
    runs = report.get("serving", []) + report.get("workers", [])
    for workers in sorted({r["workers"] for r in runs}):
        floor = _find(runs, "floor", "REST JSON", 64, workers)
        roost = _find(runs, "roost", "REST JSON", 64, workers)
        if floor and roost:
            ratio = roost["rps"] / floor["rps"]
            out.append({
                "target": f"Roost REST req/s at concurrency 64 >= 0.6x the floor ({workers} "
                          f"worker{'s' if workers > 1 else ''} each)",
                "measured": f"{ratio:.2f}x ({roost['rps']:,.0f} vs {floor['rps']:,.0f})",
                "met": _yes(ratio >= 0.6),
            })
    for protocol in PROTOCOLS.values():
        run = _find(report.get("serving", []), "roost", protocol, 8, 1)
        if run:
            p99 = run["latency_ms"]["p99"]
            out.append({
                "target": f"p99 < 10 ms at concurrency 8, breast-cancer, Roost {protocol}",
                "measured": _ms(p99),
                "met": _yes(p99 < 10),
            })
    batching = report.get("batching", {}).get("runs", [])
    if len(batching) >= 2:
        off = batching[0]
        best = max(batching[1:], key=lambda r: r["rps"])
        ratio = best["rps"] / off["rps"]
        p99_ok = best["latency_ms"]["p99"] <= off["latency_ms"]["p99"]
        out.append({
            "target": "batching at concurrency 64: >= 2x req/s at equal or better p99 "
                      "(digits MLP)",
            "measured": f"{ratio:.2f}x, p99 {_ms(best['latency_ms']['p99'])} vs "
                        f"{_ms(off['latency_ms']['p99'])} ({best['config_label']})",
            "met": _yes(ratio >= 2 and p99_ok),
        })
    for run in report.get("burst", {}).get("runs", []):
        verdict = run["verdict"]
        rss = run["rss"]
        name = f"burst, {run['config_label']}"
        out.append({
            "target": f"{name}: every request answered (200/503/504)",
            "measured": f"{run['answered']:,} of {run['sent']:,} sent; statuses "
                        f"{run['statuses']}; socket errors {sum(run['socket_errors'].values())}",
            "met": _yes(verdict["every_request_answered"]),
        })
        out.append({
            "target": f"{name}: memory bounded",
            "measured": f"RSS {rss['idle_mib']:.0f} MiB idle, max {rss['max_burst_mib'] or 0:.0f}"
                        f" MiB; second half of the burst "
                        f"{verdict['rss_growth_second_half_mib']:+.1f} MiB over the first",
            "met": _yes(verdict["memory_bounded"]),
        })
        out.append({
            "target": f"{name}: accepted requests meet the deadline "
                      f"({run['deadline_ms']:g} ms queue timeout + margin)",
            "measured": f"200s p99 {_ms(verdict['accepted_p99_ms_client'])} at the client, "
                        f"{_ms(verdict['accepted_p99_ms_server'])} inside the gateway",
            "met": _yes(verdict["accepted_meet_deadline_client"]),
        })
    return out


# ------------------------------------------------------------------------------------------
# main


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("command", nargs="?", default="all",
                        choices=["all", "serving", "batching", "burst"])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--concurrency", type=_ints, default=[1, 8, 64],
                        help="comma-separated (serving)")
    parser.add_argument("--protocols", default="json,binary,grpc",
                        type=lambda s: [p for p in s.split(",") if p],
                        help="Roost protocols in serving: json,binary,grpc")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes of each server for the main runs")
    parser.add_argument("--compare-workers", type=int, default=2,
                        help="also floor vs Roost REST at concurrency 64 with this many "
                             "processes each (0: skip)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of wrk at concurrency 64 before measuring")
    parser.add_argument("--calls", type=int, default=20000, help="in-process calls to time")
    parser.add_argument("--digits-hidden", type=_ints, default=[2048, 2048],
                        help="hidden layer sizes of the digits MLP")
    parser.add_argument("--digits-iter", type=int, default=10, help="training epochs")
    parser.add_argument("--batching-concurrency", type=int, default=64)
    parser.add_argument("--burst-factor", type=float, default=10.0,
                        help="offered rate as a multiple of the sustained rate")
    parser.add_argument("--burst-rate", type=float, default=0.0,
                        help="offered req/s (overrides --burst-factor)")
    parser.add_argument("--burst-duration", type=float, default=10.0)
    parser.add_argument("--burst-connections", type=int, default=1000)
    parser.add_argument("--burst-drain", type=float, default=30.0,
                        help="seconds to wait for the answers after the burst")
    parser.add_argument("--burst-queue", type=int, default=64, help="small max_queue_size")
    parser.add_argument("--burst-timeout-ms", type=float, default=100.0,
                        help="small queue_timeout_ms")
    parser.add_argument("--deadline-margin-ms", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="output directory")
    parser.add_argument("--keep-home", action="store_true", help="keep the temp ROOST_HOME")
    args = parser.parse_args(argv)
    unknown = set(args.protocols) - set(PROTOCOLS)
    if unknown:
        parser.error(f"unknown protocol(s): {', '.join(sorted(unknown))}")
    return args


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so the cleanup below runs either way."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(WRK_MISSING, file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO_ROOT))
    started = time.monotonic()
    bench = Bench(args)
    report = bench.report
    report.update(
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        machine=machine_info(),
        source=source_fingerprint(),
        model=MODEL,
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    )
    with _terminate_as_interrupt():
        try:
            bench.setup()
            if args.command in ("all", "serving"):
                bench.in_process()
            bench.logged_before = count_logged_rows(bench.home)
            log(f"starting floor and Roost with {args.workers} worker process(es) each ...")
            floor, roost = bench.start_servers(args.workers)
            if args.command in ("all", "serving"):
                bench.serving(floor, roost)
            if args.command in ("all", "batching"):
                bench.batching(roost)
            if args.command in ("all", "burst"):
                bench.burst(roost)
            bench.stop_servers(floor, roost)
            if args.command in ("all", "serving") and args.compare_workers > 0:
                bench.compare_workers()
        finally:
            bench.finish()
            report["wall_seconds"] = time.monotonic() - started

    table = render(report)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for path in (args.out / "results.json", args.out / f"results-{stamp}.json"):
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "results.md").write_text(table + "\n")
    log(f"\nwrote {args.out / 'results.json'} ({report['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: a native extension imported by the pipeline (duckdb, via
    # nanobind) prints a page of "leaked" warnings at exit that say nothing about this run.
    os._exit(code)
