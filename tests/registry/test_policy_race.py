"""Writers racing on one SQLite registry file lose no policy update.

Three writers edit the same model's policy many times at once: one toggles shadows, one starts
and stops experiments, one moves the canary percent. Run as three threads (each with its own
Registry) and as three processes (``python -c`` on the same file). Afterwards the final policy
is the union of their effects, every edit has its audit record under its writer's name, the
chain verifies, the generation grew by exactly the number of edits, and every record differs
from the one before it only in the part its writer edits (a lost update would show up as
another writer's part going back in time).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from roost_testing import deploy_model, make_linear_onnx

from registry import Registry, RoostSettings, State, traffic_ops

EDITS = 33  # per writer; odd, so every toggled thing ends up on
FIELD_OF = {"shadows": "shadows", "experiments": "experiments", "canary": "canary"}


def writer(registry: Registry, role: str, edits: int) -> None:
    """The edits of one writer (also run in a subprocess, see ``SCRIPT``)."""
    for i in range(edits):
        if role == "shadows":
            version = 3 + i % 3
            present = any(s.version == version for s in registry.get_policy("m").shadows)
            if present:
                traffic_ops.remove_shadow(registry, "m", version, actor=role)
            else:
                traffic_ops.set_shadow(registry, "m", version, float(i), actor=role)
        elif role == "experiments":
            exp_id = f"e{i % 4}"
            if any(e.id == exp_id for e in registry.get_policy("m").experiments):
                traffic_ops.stop_experiment(registry, "m", exp_id, actor=role)
            else:
                variants = [{"version": 1, "weight": 50}, {"version": 3 + i % 3, "weight": 50}]
                traffic_ops.start_experiment(
                    registry, "m", exp_id, variants, actor=role, share=25
                )
        else:
            traffic_ops.move_canary(registry, "m", float(i + 1), actor=role)


SCRIPT = """
import sys
from pathlib import Path
sys.path[:0] = [{tests!r}, {support!r}]
from registry import Registry
from test_policy_race import writer
registry = Registry({url!r}, Path({artifacts!r}), actor="proc")
try:
    writer(registry, sys.argv[1], int(sys.argv[2]))
finally:
    registry.close()
"""


def expected_final() -> dict[str, Any]:
    shadows: dict[int, float] = {}
    experiments: set[str] = set()
    for i in range(EDITS):
        version = 3 + i % 3
        if version in shadows:
            del shadows[version]
        else:
            shadows[version] = float(i)
        experiments ^= {f"e{i % 4}"}
    return {"shadows": shadows, "experiments": experiments, "canary": float(EDITS)}


@pytest.fixture
def shared(settings: RoostSettings) -> Iterator[Registry]:
    registry = Registry.from_settings(settings)
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    for seed in range(2, 6):
        info = registry.register_version("m", make_linear_onnx(seed=seed))
        registry.transition("m", info.version, State.VALIDATING, reason="t")
        registry.transition("m", info.version, State.VALIDATED, reason="t")
    registry.start_canary("m", 2, 1)
    yield registry
    registry.close()


def check_no_update_lost(registry: Registry, generation: int, audited: int) -> None:
    policy = registry.get_policy("m")
    want = expected_final()
    assert {s.version: s.percent for s in policy.shadows} == want["shadows"]
    assert {e.id for e in policy.experiments} == want["experiments"]
    assert policy.canary is not None and policy.canary.percent == want["canary"]
    assert registry.generation() == generation + 3 * EDITS
    records = registry.audit_records("m")[audited:]
    assert all(r.action == "traffic" for r in records)
    assert sorted(r.actor for r in records) == [
        role for role in sorted(FIELD_OF) for _ in range(EDITS)
    ]
    assert registry.audit_verify().ok
    previous = registry.audit_records("m")[audited - 1].details["policy"]
    for record in records:
        now = record.details["policy"]
        changed = {k for k in now if now[k] != previous[k]}
        assert changed <= {FIELD_OF[record.actor]}, (record.actor, changed)
        previous = now
    assert previous == policy.to_dict()


def test_threads_lose_no_update(shared: Registry, settings: RoostSettings) -> None:
    generation, audited = shared.generation(), len(shared.audit_records("m"))
    registries = [Registry.from_settings(settings) for _ in FIELD_OF]
    errors: list[BaseException] = []

    def run(registry: Registry, role: str) -> None:
        try:
            writer(registry, role, EDITS)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(r, role))
        for r, role in zip(registries, FIELD_OF, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in registries:
        r.close()
    assert not errors, errors
    check_no_update_lost(shared, generation, audited)


def test_processes_lose_no_update(shared: Registry, settings: RoostSettings) -> None:
    generation, audited = shared.generation(), len(shared.audit_records("m"))
    tests = Path(__file__).parent
    script = SCRIPT.format(
        tests=str(tests),
        support=str(tests.parent / "support"),
        url=settings.registry_url,
        artifacts=str(settings.artifacts_dir),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, role, str(EDITS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for role in FIELD_OF
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    check_no_update_lost(shared, generation, audited)
