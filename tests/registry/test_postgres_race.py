"""Every kind of writer at once on ONE PostgreSQL registry: nothing lost, everything audited.

Two ``roost`` CLI processes (one starting/stopping an experiment, one setting/removing a
shadow), an admin API client of a running gateway (moving another shadow) and a thread moving
the canary the way the canary sensor does all edit model ``m``'s policy at the same time, each
through its own connection pool. Afterwards the generation grew by exactly the number of
writes, each write has its ``traffic`` audit record under its writer's name, the chain verifies
and the policy is the union of the last edit of each writer (the API client and the sensor keep
editing until both CLIs are done, so every CLI write races the others). The three-writer
thread and process races of test_policy_race.py run on PostgreSQL too, through the
``settings`` parametrisation (tests/registry/conftest.py). Also here: the PostgreSQL twin of
test_registry's SQLite tampering test.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from cli_testing import roost_executable
from roost_testing import deploy_model, make_linear_onnx, running_gateway

from registry import Registry, RoostSettings, State, traffic_ops
from registry.notify import libpq_conninfo

ADMIN = {"x-api-key": "roost-dev-key"}  # dev mode's admin key
EXPERIMENT = [
    ["experiment", "start", "m", "--id", "eA", "--variant", "1=50", "--variant", "4=50",
     "--share", "25"],
    ["experiment", "stop", "m", "--id", "eA"],
]
SHADOW = [["shadow", "m", "3", "--percent", "10"], ["shadow", "m", "3", "--remove"]]
CLI_EDITS = 3  # per CLI writer: start, stop, start / set, remove, set
MIN_EDITS = 6  # the API client and the sensor edit until both CLIs are done, at least this often


@pytest.fixture
def pg_settings(postgres_url: str, tmp_path: Path) -> RoostSettings:
    return RoostSettings(
        home=tmp_path / "roost", database_url=postgres_url, dev_mode=True, poll_interval_s=5.0
    )


@pytest.fixture
def shared(pg_settings: RoostSettings) -> Iterator[Registry]:
    registry = Registry.from_settings(pg_settings)
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    for seed in range(2, 6):
        info = registry.register_version("m", make_linear_onnx(seed=seed))
        registry.transition("m", info.version, State.VALIDATING, reason="t")
        registry.transition("m", info.version, State.VALIDATED, reason="t")
    registry.start_canary("m", 2, 1)
    yield registry
    registry.close()


def cli_writer(settings: RoostSettings, actor: str, commands: list[list[str]]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
    assert settings.database_url is not None
    env.update(
        ROOST_HOME=str(settings.home), ROOST_DATABASE_URL=settings.database_url, ROOST_ACTOR=actor
    )
    for i in range(CLI_EDITS):
        done = subprocess.run(
            [roost_executable(), *commands[i % 2]],
            capture_output=True, text=True, env=env, timeout=120,
        )
        assert done.returncode == 0, done.stderr


def test_clis_admin_api_and_sensor_race_on_postgres(
    shared: Registry, pg_settings: RoostSettings
) -> None:
    generation, audited = shared.generation(), len(shared.audit_records())
    sensor = Registry.from_settings(pg_settings)
    errors: list[BaseException] = []
    with running_gateway(pg_settings) as url:
        start = threading.Barrier(4)
        clis_done = threading.Event()
        edits = {"api": 0, "sensor": 0}

        def keep_writing(who: str) -> Iterator[int]:
            i = 0
            while i < MIN_EDITS or not clis_done.is_set():
                yield i
                i += 1
                edits[who] = i
                clis_done.wait(0.05)

        def api_writer() -> None:
            with httpx.Client(base_url=str(url), headers=ADMIN, timeout=60) as client:
                start.wait()
                for i in keep_writing("api"):
                    body = {"version": 5, "percent": i % 90 + 1}
                    r = client.post("/admin/models/m/shadows", json=body)
                    assert r.status_code == 200, r.text

        def sensor_writer() -> None:
            start.wait()
            for i in keep_writing("sensor"):
                traffic_ops.move_canary(sensor, "m", float(i % 50 + 2), actor="sensor")

        def guarded(target: object, *args: object) -> threading.Thread:
            assert callable(target)

            def run() -> None:
                try:
                    target(*args)
                except BaseException as exc:  # surfaced below
                    errors.append(exc)

            return threading.Thread(target=run)

        def cli(actor: str, commands: list[list[str]]) -> None:
            start.wait()
            cli_writer(pg_settings, actor, commands)

        clis = [
            guarded(cli, "cli-experiment", EXPERIMENT),
            guarded(cli, "cli-shadow", SHADOW),
        ]
        threads = [*clis, guarded(api_writer), guarded(sensor_writer)]
        for t in threads:
            t.start()
        for t in clis:
            t.join(timeout=300)
        clis_done.set()
        for t in threads:
            t.join(timeout=300)
        with httpx.Client(base_url=str(url), headers=ADMIN) as client:
            seen_by_gateway = client.get("/admin/models/m/traffic").json()
    sensor.close()
    assert not errors, errors

    writes = 2 * CLI_EDITS + edits["api"] + edits["sensor"]
    assert shared.generation() == generation + writes
    records = shared.audit_records()[audited:]
    assert len(records) == writes and all(r.action == "traffic" for r in records)
    by_actor = Counter(r.actor for r in records)
    api_actors = set(by_actor) - {"cli-experiment", "cli-shadow", "sensor"}
    assert len(api_actors) == 1, by_actor
    assert by_actor == {
        "cli-experiment": CLI_EDITS,
        "cli-shadow": CLI_EDITS,
        "sensor": edits["sensor"],
        api_actors.pop(): edits["api"],
    }
    assert shared.audit_verify().ok
    policy = shared.get_policy("m")
    last_api, last_sensor = edits["api"] - 1, edits["sensor"] - 1
    assert {s.version: s.percent for s in policy.shadows} == {3: 10.0, 5: last_api % 90 + 1}
    assert [e.id for e in policy.experiments] == ["eA"]
    assert policy.canary is not None and policy.canary.percent == last_sensor % 50 + 2
    assert seen_by_gateway == policy.to_dict()


def test_audit_tampering_detected_on_postgres(shared: Registry, postgres_url: str) -> None:
    records = shared.audit_records()
    assert shared.audit_verify().ok
    target = records[len(records) // 2]
    with psycopg.connect(libpq_conninfo(postgres_url), autocommit=True) as conn:
        conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE id = %s", (target.id,))
    verdict = shared.audit_verify()
    assert not verdict.ok and verdict.first_bad_id == target.id
    with psycopg.connect(libpq_conninfo(postgres_url), autocommit=True) as conn:
        conn.execute("DELETE FROM audit_log WHERE id = %s", (target.id,))
    verdict = shared.audit_verify()
    assert not verdict.ok and "does not link" in verdict.reason
