"""Safe promotion end to end, with real processes, under steady load.

One ROOST_HOME for the module: a scikit-learn LogisticRegression on the breast-cancer data
(skl2onnx, ``zipmap: False``) is version 1, deployed through its lineage's first-version path;
``roost serve`` is the production gateway on loopback; ``dagster-daemon run`` evaluates the
canary sensor (``ROOST_CANARY_TICK_S=1``; the daemon's sensor loop itself runs every 5 s); a
load generator sends inference requests with ``roost-user`` headers (sticky canary assignment)
and the true labels as feedback (``POST /v1/feedback``), counting every non-200. In order:

1. a GOOD version 2 is registered (``roost register``), validated (``roost validate``), and its
   ``<p>_rollout`` assets are materialized (staging deployment, staging tests replaying logged
   production requests against a staging gateway subprocess, canary deployment); the sensor in
   the daemon then walks the canary schedule to production by itself, with no failed request;
2. a BAD version 3 (trained on flipped labels: right shape, wrong answers) is *injected* past
   the offline gates (validation and staging would both refuse it, so the test makes those
   registry moves itself, says so in the audit reason, and starts the rollout with
   ``roost promote``); the sensor sees the accuracy drop in the feedback and rolls it back;
   it never served more than its canary step's share, and the audit trail, the alert event,
   the observation on ``<p>_canary_deployment`` and the ``canary_rollback_report`` run say why;
3. ``roost rollback`` brings version 1 back to production within seconds, no failed request.

The asset materializations run in this process (against the same persistent Dagster instance
as the daemon, so the runs are in its history); the daemon runs only the sensor and the run it
requests. Timings and shares are written to ``promotion_figures.json`` in the module's tmp
directory and printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunsFilter,
    materialize,
)
from gateway_process import (
    REPO_ROOT,
    GatewayProcess,
    free_port,
    gateway_process,
    stop_process,
    tail,
)

from assets.demo_data import load_breast_cancer_dataset
from assets.lineage import build_lineage
from assets.resources import RegistryResource
from assets.spec import ModelSpec, parse_spec, write_spec
from registry import Registry, RoostSettings, State
from registry.rollout import RolloutPhase, RolloutStatus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

MODEL = "tumor"
P = "tumor"
SCHEDULE = [20.0, 50.0, 100.0]
RATE_PER_THREAD = 30.0  # requests per second; two threads
USERS = 3000
# Above the canary analysis' 100 labels per arm, with room for feedback still in flight: the
# accuracy test runs at the same look as error rate and latency (with fewer, a canary wrong in
# its answers but not in its status codes advances before its labels count).
MIN_REQUESTS = 150
SENSOR_LOOP_S = 5.0  # Dagster's sensor daemon evaluates at most every 5 s, whatever the interval


def _onnx(X: np.ndarray, y: np.ndarray, C: float) -> bytes:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, max_iter=10_000).fit(X, y)
    data: bytes = to_onnx(clf, X[:1], options={"zipmap": False}).SerializeToString()
    return data


@dataclass(frozen=True)
class Served:
    t: float
    status: int
    version: int | None
    variant: str | None


@dataclass
class Load:
    """Inference requests plus feedback at a steady rate from two threads; every answer kept."""

    url: str
    X: np.ndarray
    y: np.ndarray
    served: list[Served] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    feedback_sent: int = 0
    stop_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, max_s: float = 360.0) -> None:
        for seed in range(2):
            thread = threading.Thread(target=self._run, args=(seed, max_s), daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(30)

    def _fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(f"{time.monotonic():.2f} {what}")

    def _run(self, seed: int, max_s: float) -> None:
        rng = np.random.default_rng(seed)
        deadline = time.monotonic() + max_s
        pending: list[dict[str, Any]] = []
        last_feedback = time.monotonic()
        interval = 1.0 / RATE_PER_THREAD
        next_at = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while not self.stop_event.is_set() and time.monotonic() < deadline:
                i = int(rng.integers(len(self.X)))
                user = f"user-{int(rng.integers(USERS))}"
                body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 30],
                                    "data": [float(v) for v in self.X[i]]}]}
                try:
                    response = client.post(f"/v2/models/{MODEL}/infer", json=body,
                                           headers={"roost-user": user})
                    status = response.status_code
                except httpx.HTTPError as exc:
                    self._fail(f"infer: {exc!r}")
                    status = 0
                now = time.monotonic()
                if status == 200:
                    answer = response.json()
                    params = answer.get("parameters") or {}
                    with self.lock:
                        self.served.append(Served(now, 200, int(answer["model_version"]),
                                                  params.get("roost_variant")))
                    pending.append({"request_id": answer["id"], "label": int(self.y[i])})
                else:
                    if status:
                        self._fail(f"infer: {status} {response.text[:200]}")
                    with self.lock:
                        self.served.append(Served(now, status, None, None))
                if pending and (now - last_feedback > 0.5 or len(pending) >= 50):
                    self._feedback(client, pending)
                    pending, last_feedback = [], now
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
            if pending:
                self._feedback(client, pending)

    def _feedback(self, client: httpx.Client, items: list[dict[str, Any]]) -> None:
        try:
            response = client.post("/v1/feedback", json={"feedback": items})
        except httpx.HTTPError as exc:
            self._fail(f"feedback: {exc!r}")
            return
        if response.status_code != 200:
            self._fail(f"feedback: {response.status_code} {response.text[:200]}")
        else:
            with self.lock:
                self.feedback_sent += len(items)

    def window(self, start: float, end: float | None = None) -> list[Served]:
        with self.lock:
            return [s for s in self.served if s.t >= start and (end is None or s.t <= end)]

    def failures_since(self, start: float) -> list[str]:
        with self.lock:
            return [f for f in self.failures if float(f.split(" ", 1)[0]) >= start]

    def wait_for(self, version: int, count: int = 20, timeout_s: float = 20.0) -> float:
        """When the first of ``count`` consecutive answers from ``version`` arrived."""
        deadline = time.monotonic() + timeout_s
        since = time.monotonic()
        while time.monotonic() < deadline:
            recent = self.window(since)
            run = 0
            for i, served in enumerate(recent):
                run = run + 1 if served.version == version else 0
                if run >= count:
                    return recent[i - count + 1].t
            time.sleep(0.2)
        raise AssertionError(f"the gateway did not answer with version {version} only")


@dataclass
class Platform:
    home: Path
    spec: ModelSpec
    settings: RoostSettings
    env: dict[str, str]
    gateway: GatewayProcess
    load: Load
    instance: DagsterInstance
    daemon_log: Path
    X: np.ndarray
    y: np.ndarray
    figures: dict[str, Any] = field(default_factory=dict)

    def roost(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "orchestration", *args], env=self.env,
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
        if check:
            assert result.returncode == 0, f"roost {' '.join(args)}:\n{result.stdout}\n" \
                                           f"{result.stderr}"
        return result

    def registry(self) -> Registry:
        return Registry.from_settings(self.settings)

    def rollout(self) -> RolloutStatus:
        reg = self.registry()
        try:
            status = reg.get_rollout(MODEL)
        finally:
            reg.close()
        assert status is not None
        return status

    def wait_rollout(self, phases: set[RolloutPhase], timeout_s: float) -> tuple[
            RolloutStatus, list[float]]:
        """Poll the record until it reaches one of ``phases``; the percents seen on the way."""
        deadline = time.monotonic() + timeout_s
        seen: list[float] = []
        while time.monotonic() < deadline:
            status = self.rollout()
            if not seen or seen[-1] != status.percent:
                seen.append(status.percent)
            if status.phase in phases:
                return status, seen
            time.sleep(0.5)
        raise AssertionError(f"rollout still {self.rollout().to_dict()} after {timeout_s}s; "
                             f"daemon log:\n{tail(self.daemon_log, 4000)}")

    def materialize(self, job: str) -> Any:
        lineage = build_lineage(self.spec)
        selection = (lineage.validate_selection() if job == "validate"
                     else lineage.rollout_selection())
        return materialize([*lineage.assets, *lineage.checks], selection=selection,
                           instance=self.instance, raise_on_error=False,
                           resources={"registry": RegistryResource(home=str(self.home))})


def _wait_log(path: Path, text: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise AssertionError(f"daemon: no {text!r} within {timeout_s}s:\n{tail(path, 4000)}")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("promotion")
    home = root / "home"
    home.mkdir()
    data = load_breast_cancer_dataset()
    X, y = data.X.astype(np.float32), data.y.astype(np.int64)
    data.frame[[*data.feature_names, "label"]].to_csv(root / "held_out.csv", index=False)
    spec = parse_spec({
        "name": MODEL,
        "held_out": {"path": str(root / "held_out.csv"), "label": "label"},
        "validation": {"metric": "accuracy", "minimum": 0.9, "latency_p99_ms": 100},
        "staging": {"replay_sample": 40, "latency_budget_ms": 2000, "min_agreement": 0.9},
        "canary": {"schedule": SCHEDULE, "step_interval_s": 2, "alpha": 0.01,
                   "min_requests": MIN_REQUESTS,
                   # sub-ms answers on a shared 2-core box: a busy neighbour puts 10-20 ms
                   # spikes in whichever arm it hits; this test is about answers and failures
                   "p99_floor_ms": 100},
    })
    write_spec(home, spec)
    dagster_home = home / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(ROOST_HOME=str(home), DAGSTER_HOME=str(dagster_home), ROOST_CANARY_TICK_S="1",
               ROOST_LOG_FLUSH_INTERVAL_S="0.5", ROOST_POLL_INTERVAL_S="0.5",
               ROOST_ACTOR="e2e-test", PYTHONUNBUFFERED="1")
    for i, (C, labels) in enumerate([(1.0, y), (0.3, y), (1.0, 1 - y)], start=1):
        (root / f"v{i}.onnx").write_bytes(_onnx(X, labels, C))

    with pytest.MonkeyPatch.context() as mp:
        for key in ("ROOST_HOME", "DAGSTER_HOME", "ROOST_LOG_FLUSH_INTERVAL_S",
                    "ROOST_POLL_INTERVAL_S", "ROOST_ACTOR"):
            mp.setenv(key, env[key])
        settings = RoostSettings()
        with DagsterInstance.get() as instance:
            platform = Platform(home, spec, settings, env, None, None, instance,  # type: ignore[arg-type]
                                root / "daemon.log", X, y)
            platform.roost("register", str(root / "v1.onnx"), "--model", MODEL)
            assert platform.materialize("validate").success
            first = platform.materialize("rollout")
            assert first.success
            reg = platform.registry()
            try:
                assert reg.get_deployment(MODEL).production_version == 1  # type: ignore[union-attr]
            finally:
                reg.close()

            # One code server for the daemon (as `roost up` does): left to itself the daemon
            # replaces its code server every minute, a CPU burst that skews canary latencies.
            bindir = Path(sys.executable).parent
            code_port = free_port()
            workspace = root / "workspace.yaml"
            workspace.write_text(
                "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
                f"      port: {code_port}\n      location_name: orchestration.definitions\n"
            )
            with platform.daemon_log.open("ab") as out:
                code_server = subprocess.Popen(
                    [str(bindir / "dagster"), "code-server", "start", "-h", "127.0.0.1",
                     "-p", str(code_port), "-m", "orchestration.definitions",
                     "--location-name", "orchestration.definitions"],
                    cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                daemon = subprocess.Popen(
                    [str(bindir / "dagster-daemon"), "run", "-w", str(workspace)],
                    cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                with gateway_process(home, env=env, grpc=False, name="production") as gateway:
                    platform.gateway = gateway
                    platform.load = Load(gateway.url, X, y)
                    platform.load.start()
                    try:
                        _wait_log(platform.daemon_log, "sensor: canary_sensor", daemon, 120)
                        yield platform
                    finally:
                        platform.load.stop()
            finally:
                stop_process(daemon, timeout_s=20)
                stop_process(code_server, timeout_s=20)
                out_path = root / "promotion_figures.json"
                text = json.dumps(platform.figures, indent=2)
                out_path.write_text(text)
                print(f"\npromotion figures ({out_path}):\n{text}")


def _versions(served: list[Served]) -> dict[int | None, int]:
    counts: dict[int | None, int] = {}
    for s in served:
        counts[s.version] = counts.get(s.version, 0) + 1
    return counts


def test_a_good_version_walks_validation_staging_canary_to_production(
    platform: Platform,
) -> None:
    time.sleep(3)  # logged production traffic for the staging replay (sealed every 0.5 s)
    out = platform.roost("register", str(platform.home.parent / "v2.onnx"), "--model", MODEL)
    assert "registered tumor version 2" in out.stdout
    out = platform.roost("validate", MODEL)
    assert "tumor version 2: VALIDATED" in out.stdout, out.stdout

    started = time.monotonic()
    rolled = platform.materialize("rollout")
    assert rolled.success
    checks = {e.check_name: e for e in rolled.get_asset_check_evaluations()}
    assert all(c.passed for c in checks.values()), checks
    assert checks["staging_agreement_check"].metadata["source"].value == "production-log"
    status = platform.rollout()
    assert (status.phase, status.version, status.percent) == (RolloutPhase.CANARY, 2, 20.0)
    canary_at = time.monotonic()

    promoted, percents = platform.wait_rollout(
        {RolloutPhase.PROMOTED, RolloutPhase.ROLLED_BACK}, timeout_s=150)
    promoted_at = time.monotonic()
    assert promoted.phase is RolloutPhase.PROMOTED, promoted.to_dict()
    assert percents[0] == 20.0 and 50.0 in percents
    switched = platform.load.wait_for(2)

    window = platform.load.window(started, switched)
    assert platform.load.failures_since(started) == []
    counts = _versions(window)
    assert counts.get(2, 0) > 0 and counts.get(1, 0) > 0
    reg = platform.registry()
    try:
        assert reg.get_deployment(MODEL).production_version == 2  # type: ignore[union-attr]
        assert reg.get_version(MODEL, 1).state is State.DEPRECATED
        actions = [(r.action, r.actor) for r in reg.audit_records(MODEL)]
    finally:
        reg.close()
    assert ("rollout_advance", "dagster:canary_sensor") in actions
    assert ("rollout_promote", "dagster:canary_sensor") in actions
    status_json = json.loads(platform.roost("rollout", "status", MODEL, "--json").stdout)
    assert status_json["phase"] == "PROMOTED" and status_json["replaced_version"] == 1

    platform.figures["promotion"] = {
        "rollout_job_s": round(canary_at - started, 1),
        "canary_to_promotion_s": round(promoted_at - canary_at, 1),
        "schedule": SCHEDULE, "step_interval_s": 2.0, "sensor_loop_s": SENSOR_LOOP_S,
        "percents_seen": percents,
        "requests": len(window), "by_version": {str(k): v for k, v in counts.items()},
        "failed_requests": len(platform.load.failures_since(started)),
    }


def test_a_bad_canary_is_rolled_back_by_the_sensor(platform: Platform) -> None:
    out = platform.roost("register", str(platform.home.parent / "v3.onnx"), "--model", MODEL)
    assert "registered tumor version 3" in out.stdout
    injected = ("e2e test: injected defect (trained on flipped labels); the offline gates "
                "would refuse it, the test moves it past them to exercise the canary")
    reg = platform.registry()
    try:
        production = reg.get_deployment(MODEL).production_version  # type: ignore[union-attr]
        reg.transition(MODEL, 3, State.VALIDATING, reason=injected, actor="e2e-test")
        reg.transition(MODEL, 3, State.VALIDATED, reason=injected, actor="e2e-test")
        platform.roost("promote", MODEL, "3", "--schedule", ",".join(f"{p:g}" for p in SCHEDULE),
                       "--reason", injected, "--no-staging-tests")
        reg.staging_passed(MODEL, 3, evidence={"injected": True}, actor="e2e-test")
        started = time.monotonic()
        canary = reg.begin_canary(MODEL, 3, actor="e2e-test")
    finally:
        reg.close()
    assert canary.percent == SCHEDULE[0]

    rolled, percents = platform.wait_rollout(
        {RolloutPhase.PROMOTED, RolloutPhase.ROLLED_BACK}, timeout_s=150)
    rolled_at = time.monotonic()
    assert rolled.phase is RolloutPhase.ROLLED_BACK, rolled.to_dict()
    assert percents == [SCHEDULE[0], 0.0], percents
    assert "accuracy" in rolled.reason, rolled.reason
    time.sleep(2.5)  # the gateway polls the registry every 0.5 s
    assert set(_versions(platform.load.window(time.monotonic() - 1.0))) == {production}

    window = platform.load.window(started, rolled_at)
    bad = sum(1 for s in window if s.version == 3)
    share = bad / len(window)
    assert 0 < share <= SCHEDULE[0] / 100 + 0.08, (bad, len(window))
    assert not [s for s in platform.load.window(rolled_at + 2.0) if s.version == 3]
    assert platform.load.failures_since(started) == []

    reg = platform.registry()
    try:
        assert reg.get_deployment(MODEL).production_version == production  # type: ignore[union-attr]
        assert reg.get_version(MODEL, 3).state is State.ROLLBACK
        records = [r for r in reg.audit_records(MODEL) if r.action == "rollout_rollback"]
    finally:
        reg.close()
    assert records and records[-1].actor == "dagster:canary_sensor"
    assert "accuracy" in json.dumps(records[-1].details)
    audit_log = platform.roost("audit", "log", "--model", MODEL).stdout
    assert "rollout_rollback" in audit_log
    alerts = (platform.settings.logs_dir / "alerts" / "events.jsonl").read_text()
    assert "CanaryRollback" in alerts

    observed = platform.instance.fetch_observations(AssetKey(f"{P}_canary_deployment"), 20)
    actions = [r.asset_observation.metadata["action"].value  # type: ignore[union-attr]
               for r in observed.records]
    assert "rolled_back" in actions and "promoted" in actions
    deadline = time.monotonic() + 90
    runs: Sequence[DagsterRun] = []
    while time.monotonic() < deadline:
        runs = platform.instance.get_runs(RunsFilter(job_name="canary_rollback_report",
                                                     tags={"roost/version": "3"}))
        if runs and runs[0].status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE):
            break
        time.sleep(1)
    assert runs and runs[0].status is DagsterRunStatus.SUCCESS, runs
    platform.figures["rollback"] = {
        "canary_to_rollback_s": round(rolled_at - started, 1),
        "canary_percent": SCHEDULE[0],
        "requests": len(window), "served_by_bad_version": bad,
        "bad_share": round(share, 4),
        "reason": rolled.reason,
        "failed_requests": len(platform.load.failures_since(started)),
    }


def test_one_click_rollback_returns_the_previous_version(platform: Platform) -> None:
    started = time.monotonic()
    out = platform.roost("rollback", MODEL, "--reason", "e2e: one-click rollback")
    returned = time.monotonic()
    assert "production version is 1 again (was 2)" in out.stdout
    switched = platform.load.wait_for(1)
    time.sleep(1)
    assert platform.load.failures_since(started) == []
    reg = platform.registry()
    try:
        assert reg.get_deployment(MODEL).production_version == 1  # type: ignore[union-attr]
    finally:
        reg.close()
    platform.figures["one_click_rollback"] = {
        "command_s": round(returned - started, 1),
        "command_to_previous_version_serving_s": round(switched - started, 1),
        "failed_requests": len(platform.load.failures_since(started)),
        "requests": len(platform.load.window(started)),
    }
    platform.figures["load"] = {
        "rate_per_s": 2 * RATE_PER_THREAD, "users": USERS,
        "total_requests": len(platform.load.served),
        "feedback_labels": platform.load.feedback_sent,
        "failed_requests": len(platform.load.failures),
    }
