"""Staging tests: replay real requests against a staging gateway serving only the candidate.

:func:`run_staging_tests` is the seam the ``<model>_staging_tests`` asset calls:

1. start a staging gateway for the model (``ROOST_SCOPE=staging``, ``ROOST_SERVE_MODELS=<model>``,
   free loopback ports): a ``roost serve`` subprocess, or uvicorn in a thread (the spec's
   ``staging.gateway``); it serves the versions in STAGING / STAGING_TESTED and logs to
   ``$ROOST_HOME/logs-staging``, never the production log;
2. replay up to ``staging.replay_sample`` of the model's most recent successful production
   requests from the prediction log (rows whose inputs were summarized rather than listed are
   skipped), pinned to the candidate version; with no production traffic yet, rows of the
   held-out data instead;
3. report the error rate, client-side latency p50/p99 against the budget and, for replayed
   requests, the share whose predicted label agrees with what production answered.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from assets.held_out import load_held_out
from assets.spec import ModelSpec
from registry import Registry, RoostSettings

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Sample:
    """One request to replay: the v2 JSON body and production's label for it (if logged)."""

    body: dict[str, Any]
    production_labels: list[int] | None = None


@dataclass
class StagingReport:
    """What the staging tests measured and whether the candidate passed."""

    model: str
    version: int
    source: str  # "production-log" | "held-out"
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    agreement: float | None
    compared: int
    settings: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    first_error: str = ""

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 1.0

    @property
    def reason(self) -> str:
        return "; ".join(self.problems) or "all staging criteria met"

    def evidence(self) -> dict[str, Any]:
        """Plain JSON: the asset checks' metadata and the rollout record's evidence."""
        return {
            "version": self.version,
            "source": self.source,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 6),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "agreement": None if self.agreement is None else round(self.agreement, 6),
            "compared_with_production": self.compared,
            "passed": self.passed,
            "reason": self.reason,
            "first_error": self.first_error,
            **{f"bar.{k}": v for k, v in self.settings.items()},
        }


# -- what to replay -------------------------------------------------------------------------


def _label_of(outputs: list[dict[str, Any]]) -> list[int] | None:
    """The predicted labels in a v2 outputs list (``label``, an integer tensor, or argmax)."""
    by_name = {o.get("name"): o for o in outputs if isinstance(o, dict)}
    label = by_name.get("label") or next(
        (o for o in outputs if str(o.get("datatype", "")).startswith(("INT", "UINT"))), None
    )
    if label is not None and isinstance(label.get("data"), list):
        return [int(v) for v in label["data"]]
    proba = by_name.get("probabilities")
    if proba is not None and isinstance(proba.get("data"), list) and len(proba["shape"]) == 2:
        arr = np.asarray(proba["data"], dtype=np.float64).reshape(proba["shape"])
        return [int(v) for v in arr.argmax(axis=1)]
    return None


def production_samples(
    settings: RoostSettings, model: str, limit: int,
    consented: Callable[[str | None], bool] | None = None,
) -> list[Sample]:
    """The model's ``limit`` most recent successful, non-shadow production requests (from the
    production scope's sealed log: local, or object storage when ``ROOST_LOGS_URL`` says so);
    ``consented(user_id)`` False drops a row (users who withdrew ``training`` consent,
    :func:`registry.consent.training_filter`)."""
    import pyarrow.dataset as ds

    from registry.storage import local_path, logs_location

    location = logs_location(settings.model_copy(update={"scope": "production"}))
    relative = f"predictions/model={model}"
    if location.local:
        directory = local_path(location.url) / relative
        if not directory.is_dir():
            return []
        dataset = ds.dataset(str(directory), format="parquet", partitioning="hive")
    else:
        files = location.glob(f"{relative}/**/*.parquet")
        if not files:
            return []
        dataset = ds.dataset(files, format="parquet", filesystem=location.fs)
    table = dataset.to_table(columns=["ts", "inputs", "outputs", "status", "shadow", "user_id"])
    frame = table.to_pandas()
    frame = frame[(frame["status"] == 200) & (~frame["shadow"])].sort_values("ts")
    if consented is not None:
        frame = frame[[consented(u) for u in frame["user_id"]]]
    samples: list[Sample] = []
    for inputs, outputs in zip(
        reversed(frame["inputs"].tolist()), reversed(frame["outputs"].tolist()), strict=True
    ):
        try:
            tensors = json.loads(inputs).get("inputs", [])
            logged = json.loads(outputs) if outputs else []
        except (json.JSONDecodeError, AttributeError):
            continue
        if not tensors or any("data" not in t or "summary" in t for t in tensors):
            continue  # summarized (too large to log): nothing to replay
        keys = ("name", "datatype", "shape", "data")
        body = {"inputs": [{k: t[k] for k in keys} for t in tensors]}
        samples.append(Sample(body, _label_of(logged)))
        if len(samples) >= limit:
            break
    return samples


def held_out_samples(spec: ModelSpec, registry: Registry, version: int, limit: int) -> list[Sample]:
    """Single-row requests built from the held-out data, in the version's input tensor."""
    dataset = load_held_out(spec.held_out, spec.name)
    tensor = registry.get_version(spec.name, version).signature.inputs[0]
    X = dataset.X[:limit]
    integer = tensor.datatype.startswith(("INT", "UINT"))
    return [
        Sample(
            {
                "inputs": [
                    {
                        "name": tensor.name,
                        "datatype": tensor.datatype,
                        "shape": [1, int(X.shape[1])],
                        "data": [int(v) if integer else float(v) for v in row],
                    }
                ]
            }
        )
        for row in X
    ]


# -- the staging gateway ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, alive: Any, timeout_s: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise RuntimeError(f"the staging gateway did not become ready; its log ends:\n{tail}")


@contextlib.contextmanager
def staging_gateway(
    settings: RoostSettings, model: str, *, mode: str = "subprocess", timeout_s: float = 120.0
) -> Iterator[str]:
    """A staging gateway serving only ``model``; yields its base URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    if mode == "in_process":
        import uvicorn

        from serving.app import create_app

        staged = settings.model_copy(
            update={"scope": "staging", "serve_models": [model], "grpc_port": 0,
                    "host": "127.0.0.1", "http_port": port}
        )
        server = uvicorn.Server(
            uvicorn.Config(create_app(staged), host="127.0.0.1", port=port,
                           log_level="warning", access_log=False, lifespan="on")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            _wait_ready(url, thread.is_alive, timeout_s, None)
            yield url
        finally:
            server.should_exit = True
            thread.join(30)
        return
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(
        ROOST_HOME=str(settings.home), ROOST_SCOPE="staging", ROOST_SERVE_MODELS=model,
        ROOST_HOST="127.0.0.1", ROOST_HTTP_PORT=str(port), ROOST_GRPC_PORT="0",
        ROOST_WORKERS="1",
    )
    if settings.database_url:
        env["ROOST_DATABASE_URL"] = settings.database_url
    log = settings.home / "process-logs" / f"staging-{model}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestration", "serve"], cwd=REPO_ROOT, env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_ready(url, lambda: proc.poll() is None, timeout_s, log)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


# -- the tests --------------------------------------------------------------------------------


def replay(url: str, model: str, version: int, samples: list[Sample]) -> dict[str, Any]:
    """Send every sample to the pinned version; latency, errors and label agreement."""
    timings: list[float] = []
    errors, agree, compared, first_error = 0, 0, 0, ""
    with httpx.Client(base_url=url, timeout=10.0) as client:
        for sample in samples:
            started = time.perf_counter()
            try:
                response = client.post(f"/v2/models/{model}/versions/{version}/infer",
                                       json=sample.body)
            except httpx.HTTPError as exc:
                timings.append((time.perf_counter() - started) * 1000)
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                continue
            timings.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                errors += 1
                first_error = first_error or f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            labels = _label_of(response.json().get("outputs", []))
            if sample.production_labels is not None and labels is not None:
                compared += 1
                agree += int(labels == sample.production_labels)
    p50, p99 = (float(v) for v in np.percentile(timings, [50, 99])) if timings else (0.0, 0.0)
    return {"errors": errors, "p50": p50, "p99": p99, "compared": compared, "agree": agree,
            "first_error": first_error}


def run_staging_tests(
    spec: ModelSpec, version: int, registry: Registry, settings: RoostSettings
) -> StagingReport:
    """Start a staging gateway for ``spec``'s model, replay traffic at ``version``, judge it."""
    bar = spec.staging
    from registry.consent import ConsentStore, training_filter
    from warehouse.minimise import UserIdHasher

    consent = ConsentStore(registry, UserIdHasher.from_settings(settings, warn=False))
    samples = production_samples(settings, spec.name, bar.replay_sample, training_filter(consent))
    source = "production-log"
    if not samples:
        samples, source = held_out_samples(spec, registry, version, bar.replay_sample), "held-out"
    with staging_gateway(settings, spec.name, mode=bar.gateway) as url:
        measured = replay(url, spec.name, version, samples)
    compared = int(measured["compared"])
    report = StagingReport(
        model=spec.name, version=version, source=source, requests=len(samples),
        errors=int(measured["errors"]), p50_ms=measured["p50"], p99_ms=measured["p99"],
        agreement=measured["agree"] / compared if compared else None, compared=compared,
        settings=bar.model_dump(exclude={"gateway"}), first_error=measured["first_error"],
    )
    if not samples:
        report.problems.append("nothing to replay (no production requests, no held-out rows)")
    if report.error_rate > bar.max_error_rate:
        report.problems.append(
            f"error rate {report.error_rate:.3f} > {bar.max_error_rate} "
            f"({report.errors} of {report.requests}; first: {report.first_error})"
        )
    if report.p99_ms > bar.latency_budget_ms:
        report.problems.append(f"p99 latency {report.p99_ms:.1f} ms > {bar.latency_budget_ms} ms")
    if report.agreement is not None and report.agreement < bar.min_agreement:
        report.problems.append(
            f"agreement with production {report.agreement:.3f} < {bar.min_agreement} "
            f"over {compared} replayed requests"
        )
    return report
