"""Roost next to the floor and its peers, the issue's table in one run: ``benchmarks/peers.py``.

    .venv/bin/python benchmarks/peers.py            # about 10 minutes on 2 vCPUs (9.8 measured)
    .venv/bin/python benchmarks/peers.py --quick    # about 2 minutes: a try, not a result

Servers, all serving the demo breast-cancer model (one ONNX file, one row per request), all
running for the whole measurement on loopback:

- ``floor``: ``floor_app.py`` under uvicorn (one ONNX Runtime session, FastAPI, orjson);
- ``roost-<level>``: ``roost serve`` with ``ROOST_LOG_DURABILITY=<level>``, one per level that
  ``registry/settings.py`` accepts (read at run time); the default level is "as shipped";
- ``roost-w2``: ``roost serve --workers 2`` as shipped (REST JSON at the top concurrency only);
- ``mlserver``: MLServer 1.7.1, ``parallel_workers: 0`` (benchmarks/peers/mlserver/);
- ``kserve``: KServe's Python model server (benchmarks/peers/kserve/), if it installs;
- ``floor-granian`` / ``roost-granian``: the floor and Roost (as shipped, its app factory
  ``serving.app:create_app_from_env``) under Granian's CLI (``--interface asgi --loop uvloop``,
  one worker, access log off): Granian measured against uvicorn + httptools.

MLServer and KServe are installed by the script in their own virtualenvs, cached in
``~/.cache/roost-bench-peers`` (``$ROOST_PEERS_CACHE``). Load: REST JSON with wrk (``-t1``, the
same body for everyone) at ``--concurrency`` (1, 8, 64) and gRPC ``ModelInfer`` with
``grpc_load.py`` (the same Python client for every server) at ``--grpc-concurrency`` (8, 64).
``--rounds`` (2) interleaved rounds, the second in reverse server order; the table shows
medians over rounds of req/s and p99, and the server's CPU per request (process tree, user +
system). ``fdatasync`` on the ROOST_HOME's disk is measured before and after the rounds.

Writes ``<out>/peers.md`` and ``<out>/peers.json`` (``--out``, default ``benchmarks/out``) and
prints the table. The measurement (warm-up, rounds, fdatasync) holds ``/tmp/roost-bench.lock``
(flock) so that two benchmark scripts on one machine do not load it at the same time.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import typing
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    BODY_FILE,
    MODEL,
    REPO_ROOT,
    WRK_MISSING,
    Target,
    fdatasync_us,
    floor_target,
    http,
    log,
    machine_info,
    materialize_model,
    roost_target,
    run_grpc,
    run_wrk,
    scan_log,
    start,
    stop,
    wait_ready,
)
from peers.kserve import kserve_target  # noqa: E402
from peers.mlserver import mlserver_target  # noqa: E402
from peers.report import render  # noqa: E402
from peers.venvs import VenvError  # noqa: E402

LOCK_FILE = Path("/tmp/roost-bench.lock")
DEFAULT_SERVERS = ["floor", "roost", "mlserver", "kserve", "roost-w2", "floor-w2"]
OPTIONAL_SERVERS: list[str] = ["roost-gil5", "floor-granian", "roost-granian"]


def durability_levels() -> tuple[list[str], str]:
    """The values ``ROOST_LOG_DURABILITY`` accepts (from the settings class) and the default."""
    from registry.settings import RoostSettings

    field = RoostSettings.model_fields["log_durability"]
    values = [str(v) for v in typing.get_args(field.annotation)] or [str(field.default)]
    default = str(field.default)
    return [default, *[v for v in values if v != default]], default


def lock_inherited() -> bool:
    """Whether we run under ``flock /tmp/roost-bench.lock ...`` (its open file is ours too)."""
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{fd}") == str(LOCK_FILE):
                    return True
    return False


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    """Hold ``/tmp/roost-bench.lock`` (the same lock as ``flock /tmp/roost-bench.lock``), unless
    ``flock`` started us holding it already (locking it again would wait forever)."""
    if lock_inherited():
        yield
        return
    with LOCK_FILE.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------
# the servers


class Column:
    """One server in the table: its :class:`Target`, header, and what it is loaded with."""

    def __init__(self, key: str, header: str, target: Target, *, rest: list[int],
                 grpc: list[int]) -> None:
        self.key, self.header, self.target = key, header, target
        self.rest, self.grpc = rest, grpc


class PeersBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="roost-peers-"))
        self.columns: list[Column] = []
        self.report: dict[str, Any] = {"skipped": {}, "runs": [], "fdatasync_us": []}

    # -- setup ------------------------------------------------------------------------------

    def setup(self) -> None:
        args = self.args
        home = self.root / "home"
        model = materialize_with_retries(home)
        self.model_path = self.root / "model.onnx"
        self.model_path.write_bytes(model)
        self.body = BODY_FILE.read_bytes().strip()
        self.body_file = self.root / "body.json"
        self.body_file.write_bytes(self.body)
        top = max(args.concurrency)
        levels, default = durability_levels()
        self.report["durability_levels"] = levels
        makers: dict[str, Callable[[], list[Column]]] = {
            "floor": lambda: [Column("floor", "floor (uvicorn)",
                                     floor_target(self.model_path), rest=args.concurrency,
                                     grpc=[])],
            "roost": lambda: [
                Column(f"roost-{level}",
                       f"Roost, {level}" + (" (as shipped)" if level == default else ""),
                       roost_target(self.home_copy(f"roost-{level}"), name=f"roost-{level}",
                                    env={"ROOST_LOG_DURABILITY": level}),
                       rest=args.concurrency,
                       grpc=args.grpc_concurrency if level == default else [])
                for level in levels if level in (args.levels or levels)
            ],
            "roost-w2": lambda: [Column("roost-w2", "Roost, 2 workers (as shipped)",
                                        roost_target(self.home_copy("roost-w2"), 2,
                                                     name="roost-w2"),
                                        rest=[top], grpc=[])],
            "floor-w2": lambda: [Column("floor-w2", "floor, 2 workers",
                                        floor_target(self.model_path, 2),
                                        rest=[top], grpc=[])],
            "roost-gil5": lambda: [Column(
                "roost-gil5", f"Roost, {default}, CPython's 5 ms switch interval",
                roost_target(self.home_copy("roost-gil5"), name="roost-gil5",
                             env={"ROOST_GIL_SWITCH_INTERVAL_MS": "0"}),
                rest=args.concurrency, grpc=[])],
            "mlserver": lambda: [Column("mlserver", "MLServer 1.7.1",
                                        mlserver_target(self.model_path, self.root),
                                        rest=args.concurrency, grpc=args.grpc_concurrency)],
            "kserve": lambda: [Column("kserve", "KServe 0.21",
                                      kserve_target(self.model_path),
                                      rest=args.concurrency, grpc=args.grpc_concurrency)],
            "floor-granian": lambda: [Column("floor-granian", "floor (Granian)",
                                             floor_granian_target(self.model_path),
                                             rest=args.concurrency, grpc=[])],
            "roost-granian": lambda: [Column(
                "roost-granian", "Roost (as shipped) under Granian",
                roost_granian_target(self.home_copy("roost-granian")),
                rest=args.concurrency, grpc=[])],
        }
        for name in args.servers:
            try:
                self.columns += makers[name]()
            except (VenvError, OSError, subprocess.SubprocessError) as exc:
                self.report["skipped"][name] = f"{type(exc).__name__}: {exc}"[:2000]
                log(f"skipping {name}: {exc}")

    def home_copy(self, name: str) -> Path:
        """A ROOST_HOME of its own for one Roost server (registry, artifacts, logs)."""
        home = self.root / name
        shutil.copytree(self.root / "home", home, ignore=shutil.ignore_patterns("dagster*"))
        return home

    def start_all(self) -> None:
        for column in self.columns:
            start(column.target, self.root)
        ready = []
        for column in self.columns:
            try:
                wait_ready(column.target)
                self.check_answer(column)
                ready.append(column)
            except RuntimeError as exc:
                self.report["skipped"][column.key] = str(exc)[-2000:]
                log(f"skipping {column.key}: {str(exc)[:500]}")
                stop(column.target)
        self.columns = ready

    def check_answer(self, column: Column) -> None:
        """The server answers the body with the floor's probabilities (within 1e-5)."""
        status, _, answer = http("POST", column.target.url, self.body)
        if status != 200:
            raise RuntimeError(f"{column.key} answered {status}: {answer[:500]!r}")
        outputs = {o["name"]: o["data"] for o in json.loads(answer)["outputs"]}
        probabilities = [float(v) for v in outputs.get("probabilities", [])]
        reference = getattr(self, "reference", None)
        if reference is None:
            self.reference = probabilities
        elif len(probabilities) != len(reference) or any(
            abs(a - b) > 1e-5 for a, b in zip(probabilities, reference, strict=True)
        ):
            raise RuntimeError(f"{column.key} answered {probabilities}, expected {reference}")

    def stop_all(self) -> None:
        for column in self.columns:
            stop(column.target)
        logs = {}
        for column in self.columns:
            logs[column.key] = scan_log(column.target, self.args.out)
        self.report["server_logs"] = logs

    # -- load -------------------------------------------------------------------------------

    def warm_up(self) -> None:
        if self.args.warmup <= 0:
            return
        for column in self.columns:
            log(f"warm-up {column.key} -c64 {self.args.warmup:g}s ...")
            run_wrk(column.target, 64, self.args.warmup, self.body_file)

    def measure(self, column: Column, protocol: str, concurrency: int, round_: int) -> None:
        duration = self.args.duration
        log(f"round {round_ + 1}: {column.key} {protocol} -c{concurrency} {duration:g}s ...")
        if protocol == "gRPC":
            result = run_grpc(column.target, concurrency, duration, self.body_file)
        else:
            result = run_wrk(column.target, concurrency, duration, self.body_file)
        result.pop("raw", None)
        result.pop("sample_response", None)
        result.update(key=column.key, round=round_ + 1)
        self.report["runs"].append(result)

    def rounds(self) -> None:
        for round_ in range(self.args.rounds):
            order = self.columns if round_ % 2 == 0 else self.columns[::-1]
            for concurrency in self.args.concurrency:
                for column in order:
                    if concurrency in column.rest:
                        self.measure(column, "REST JSON", concurrency, round_)
            for concurrency in self.args.grpc_concurrency:
                for column in order:
                    if concurrency in column.grpc:
                        self.measure(column, "gRPC", concurrency, round_)

    def sync_probe(self) -> None:
        self.report["fdatasync_us"].append(fdatasync_us(self.root / "home"))

    # -- report -----------------------------------------------------------------------------

    def finish(self, started: float, argv: list[str]) -> str:
        self.report.update(
            finished=datetime.now(UTC).isoformat(timespec="seconds"),
            wall_s=time.monotonic() - started,
            command=" ".join(["benchmarks/peers.py", *argv]),
            commit=git_head(),
            settings={k: (str(v) if isinstance(v, Path) else v)
                      for k, v in vars(self.args).items()},
            columns=[{"key": c.key, "header": c.header, "description": c.target.description,
                      "argv": c.target.argv, "env": c.target.env} for c in self.columns],
        )
        text = render(self.report)
        out: Path = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "peers.json").write_text(json.dumps(self.report, indent=2, default=str))
        (out / "peers.md").write_text(text)
        return text


def materialize_with_retries(home: Path, attempts: int = 3) -> bytes:
    """The demo pipeline into ``home``; again on failure: its staging test has a p99 latency
    budget, which a machine busy with other work sometimes breaks."""
    for attempt in range(1, attempts + 1):
        log(f"materializing {MODEL} into {home} (attempt {attempt}) ...")
        try:
            return materialize_model(home)
        except RuntimeError:
            if attempt == attempts:
                raise
            shutil.rmtree(home, ignore_errors=True)
    raise AssertionError("unreachable")


def floor_granian_target(model_path: Path) -> Target:
    """The floor under Granian's ASGI interface (uvloop, one worker, access log off)."""
    target = floor_target(model_path, name="floor-granian")
    target.description = "floor_app.py under Granian (--interface asgi --loop uvloop)"
    target.argv = [
        str(Path(sys.executable).with_name("granian")), "--interface", "asgi", "--loop",
        "uvloop", "--factory", "--host", "127.0.0.1", "--port", str(target.port),
        "--workers", "1", "--log-level", "warning", "--no-access-log",
        "--working-dir", str(Path(__file__).resolve().parent), "floor_app:create_app",
    ]
    return target


def roost_granian_target(home: Path) -> Target:
    """Roost's app factory under Granian's CLI, with the settings ``roost serve`` gives it."""
    target = roost_target(home, name="roost-granian")
    target.description = "Roost gateway app under Granian (--interface asgi --loop uvloop)"
    target.argv = [
        str(Path(sys.executable).with_name("granian")), "--interface", "asgi", "--loop",
        "uvloop", "--factory", "--host", "127.0.0.1", "--port", str(target.port),
        "--workers", "1", "--log-level", "warning", "--no-access-log",
        "serving.app:create_app_from_env",
    ]
    return target


def git_head() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip() + (" (uncommitted changes in the tree)" if dirty.stdout else "")


# ------------------------------------------------------------------------------------------
# command line


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Roost next to the floor, MLServer and KServe: the issue's table in one run."
    )
    parser.add_argument("--quick", action="store_true",
                        help="a short try: 1 round of 3 s, c=1,64, gRPC c=8, 1 s warm-up")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run (8)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of wrk -c64 per server before measuring (2)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (2)")
    parser.add_argument("--concurrency", type=_ints, default=[1, 8, 64],
                        help="REST JSON concurrencies (1,8,64)")
    parser.add_argument("--grpc-concurrency", type=_ints, default=[8, 64],
                        help="gRPC concurrencies (8,64; empty: no gRPC)")
    parser.add_argument("--servers", type=lambda s: [v for v in s.split(",") if v],
                        default=DEFAULT_SERVERS,
                        help=f"comma-separated, of {','.join(DEFAULT_SERVERS + OPTIONAL_SERVERS)}"
                             f" (default {','.join(DEFAULT_SERVERS)})")
    parser.add_argument("--levels", type=lambda s: [v for v in s.split(",") if v],
                        default=None,
                        help="durability levels to measure (default: every level accepted)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "out")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = 3.0, 1.0, 1
        args.concurrency, args.grpc_concurrency = [1, 64], [8]
    unknown = set(args.servers) - set(DEFAULT_SERVERS + OPTIONAL_SERVERS)
    if unknown:
        parser.error(f"--servers: unknown {', '.join(sorted(unknown))}; known: "
                     f"{', '.join(DEFAULT_SERVERS + OPTIONAL_SERVERS)}")
    if not args.concurrency or args.rounds < 1 or args.duration <= 0:
        parser.error("--concurrency needs at least one value, --rounds >= 1, --duration > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(WRK_MISSING, file=sys.stderr)
        return 2
    started = time.monotonic()
    bench = PeersBench(args)
    bench.report["machine"] = machine_info()
    try:
        bench.setup()
        catch_stop_signals()  # again: the Dagster run in setup() leaves its own handlers
        bench.start_all()
        log(f"waiting for {LOCK_FILE} (other benchmarks) ...")
        with bench_lock():  # the whole measurement, as `flock /tmp/roost-bench.lock` would
            bench.report["lock_wait_s"] = time.monotonic() - started
            bench.sync_probe()
            bench.warm_up()
            bench.rounds()
            bench.sync_probe()
    except KeyboardInterrupt:
        log("interrupted: stopping the servers")
        return 130
    finally:
        bench.stop_all()
        if not args.keep:
            shutil.rmtree(bench.root, ignore_errors=True)
        else:
            log(f"kept {bench.root}")
    print(bench.finish(started, argv))
    log(f"wrote {args.out / 'peers.md'} and {args.out / 'peers.json'}")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # stop the servers in main's finally, as Ctrl-C does


def catch_stop_signals() -> None:
    """SIGTERM and SIGINT stop the run cleanly (also when started in the background, where
    SIGINT arrives ignored)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupt)


if __name__ == "__main__":
    catch_stop_signals()
    sys.exit(main())
