"""One ``/metrics`` over several processes (``roost serve --workers N``, ``ROOST_GRPC_PROCESSES``).

Every process keeps its figures in its own in-memory registry (prometheus_client's ordinary
values: an increment is a lock and an addition). prometheus_client's multiprocess mode would
instead write every increment into a memory-mapped file under one lock per process, which cost
about 2.3 µs more per counter/histogram update, ~8 µs per request (benchmarks/RESULTS.md S3.5).

How a process answering ``/metrics`` gets the others' figures (:class:`MetricsShare`):

- each process listens on an abstract Unix socket (Linux; no file, freed by the kernel when the
  process dies, however it dies) named after the shared directory and its pid, served by a
  daemon thread that answers every connection with the process's current samples as JSON;
- each process also writes the same samples to ``<dir>/<pid>.json`` when it starts, every
  :data:`SNAPSHOT_INTERVAL_S` and at exit: the file is how the others find it, and what is left
  of it once it is dead;
- the answering process asks every process that has a file: a live one answers on its socket
  (its figures are exact at that instant), a dead one's last file is used;
- :func:`merge` adds up counters and histograms over every process, live or dead (a worker
  that was replaced does not take its counts with it), and combines gauges as their
  ``multiprocess_mode`` says (``livesum`` over live processes, ``max`` over all, ...), as
  prometheus_client's :class:`~prometheus_client.multiprocess.MultiProcessCollector` does.

A process killed with SIGKILL loses the counts of its last :data:`SNAPSHOT_INTERVAL_S` at most.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger("roost.serving")

__all__ = [
    "MetricsShare", "Snapshot", "gauge_modes", "merge", "merged_registry", "snapshot",
]

SNAPSHOT_INTERVAL_S = 1.0
PEER_TIMEOUT_S = 2.0

Snapshot = list[dict[str, Any]]
"""A process's figures: one ``{name, type, help, mode, samples: [[name, labels, value]]}``
per metric family (``mode``: a gauge's ``multiprocess_mode``)."""


def socket_name(directory: str, pid: int) -> str:
    """The abstract socket (leading NUL) of process ``pid`` sharing ``directory``."""
    tag = hashlib.sha256(os.fsencode(os.path.abspath(directory))).hexdigest()[:16]
    return f"\0roost-metrics-{tag}-{pid}"


def gauge_modes(gauges: Iterable[Gauge]) -> dict[str, str]:
    """Each gauge's ``multiprocess_mode`` by name (prometheus_client keeps it private)."""
    return {g._name: str(g._multiprocess_mode) for g in gauges}


def snapshot(registry: CollectorRegistry, gauge_modes: dict[str, str]) -> Snapshot:
    """The registry's samples, ``_created`` series left out (they do not add up)."""
    families = []
    for metric in registry.collect():
        families.append({
            "name": metric.name,
            "type": metric.type,
            "help": metric.documentation,
            "mode": gauge_modes.get(metric.name, "all"),
            "samples": [
                [s.name, s.labels, s.value] for s in metric.samples
                if not s.name.endswith("_created")
            ],
        })
    return families


def merge(processes: Iterable[tuple[int, bool, Snapshot]]) -> list[Metric]:
    """Combine ``(pid, alive, snapshot)`` of every process into one set of metric families."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for pid, alive, families_of_process in processes:
        for family in families_of_process:
            name, kind, mode = family["name"], family["type"], family["mode"]
            if kind == "gauge" and mode.startswith("live") and not alive:
                continue
            if name not in families:
                families[name] = Metric(name, family["help"], kind)
                values[name] = {}
            acc = values[name]
            for sample, labels, value in family["samples"]:
                if kind == "gauge" and mode in ("all", "liveall"):
                    labels = {**labels, "pid": str(pid)}
                key = (sample, tuple(sorted(labels.items())))
                if key not in acc or kind != "gauge" or mode in ("sum", "livesum"):
                    acc[key] = acc.get(key, 0.0) + value
                elif mode in ("max", "livemax"):
                    acc[key] = max(acc[key], value)
                elif mode in ("min", "livemin"):
                    acc[key] = min(acc[key], value)
                else:  # all, liveall (one series per pid), mostrecent: the last one read
                    acc[key] = value
    for name, metric in families.items():
        for (sample, labels), value in values[name].items():
            metric.add_sample(sample, dict(labels), value)
    return list(families.values())


class _Merged(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


def merged_registry(processes: Iterable[tuple[int, bool, Snapshot]]) -> CollectorRegistry:
    """A registry exposing :func:`merge` of ``processes`` (for ``generate_latest``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(merge(processes)))
    return registry


class MetricsShare:
    """This process's part in a shared ``/metrics``: its socket, its file, and the merge.

    One per process: a newer one (a second gateway in the same process) replaces the older.
    """

    _current: MetricsShare | None = None

    def __init__(self, figures: Callable[[], Snapshot], directory: str) -> None:
        self.own = figures
        self.directory = Path(directory)
        self.pid = os.getpid()
        self.file = self.directory / f"{self.pid}.json"
        self._stop = threading.Event()
        if MetricsShare._current is not None:
            MetricsShare._current.close()
        MetricsShare._current = self
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(socket_name(directory, self.pid))
        self.listener.listen(16)
        self.write_file()
        threading.Thread(target=self._answer, name="metrics-share", daemon=True).start()
        threading.Thread(target=self._write_files, name="metrics-snapshot", daemon=True).start()
        atexit.register(self.close)

    def write_file(self) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.own()))
        tmp.replace(self.file)

    def _answer(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            with conn:
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(self.own()).encode())

    def _write_files(self) -> None:
        while not self._stop.wait(SNAPSHOT_INTERVAL_S):
            try:
                self.write_file()
            except OSError as exc:  # the directory went away (shutdown): nothing to share
                log.debug("metrics snapshot not written: %s", exc)

    def close(self) -> None:
        """Stop answering; leave the final figures in the file (kept once the process dies)."""
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with contextlib.suppress(OSError):
            self.write_file()
        if MetricsShare._current is self:
            MetricsShare._current = None

    def peer(self, pid: int) -> tuple[bool, Snapshot]:
        """``(alive, figures)`` of another process: asked live, else its last file."""
        alive = False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(PEER_TIMEOUT_S)
                conn.connect(socket_name(str(self.directory), pid))
                alive = True
                chunks = []
                while chunk := conn.recv(1 << 16):
                    chunks.append(chunk)
            return True, json.loads(b"".join(chunks))
        except (OSError, ValueError):  # dead (no socket), or alive but too slow to answer
            pass
        try:
            return alive, json.loads((self.directory / f"{pid}.json").read_text())
        except (OSError, ValueError):  # being replaced right now, or unreadable: skip it
            return alive, []

    def collect_all(self) -> CollectorRegistry:
        """A registry holding every process's figures, merged."""
        processes = [(self.pid, True, self.own())]
        for path in self.directory.glob("*.json"):
            if path.stem.isdigit() and int(path.stem) != self.pid:
                alive, figures = self.peer(int(path.stem))
                processes.append((int(path.stem), alive, figures))
        return merged_registry(processes)
