"""``roost traffic|canary|shadow|experiment``, run as real subprocesses on a temporary ROOST_HOME.

One walk through a model's traffic policy: canary, a refused canary, a shadow, an experiment,
refused policies (which must leave the running policy untouched), stopping and removing them,
rolling the canary back, replacing the whole policy, and the audit trail of all of it. The
registry is read in-process only to check what the commands did (states, the stored policy).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_testing import as_json, failed_cleanly, ok, roost
from roost_testing import make_linear_onnx

from registry import Registry, RoostSettings


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "roost"


def _stored(home: Path) -> tuple[dict[str, Any], dict[int, str]]:
    """The policy as the registry holds it, and every version's state (read in-process)."""
    registry = Registry.from_settings(RoostSettings(home=home))
    try:
        policy = registry.get_policy("m").to_dict()
        states = {v.version: v.state.value for v in registry.list_versions("m")}
        return policy, states
    finally:
        registry.close()


def test_traffic_commands_change_validate_and_audit_the_policy(
    home: Path, tmp_path: Path
) -> None:
    for seed in (1, 2, 3):
        path = tmp_path / f"v{seed}.onnx"
        path.write_bytes(make_linear_onnx(seed=seed))
        assert ok(roost(home, "register", str(path), "--model", "m")).startswith(
            f"registered m version {seed} "
        )
    for version in ("1", "2"):
        for state in ("validating", "validated"):
            ok(roost(home, "transition", "m", version, state, "--reason", "checked"))
    assert ok(roost(home, "deploy", "m", "1")) == "m: production version is 1\n"

    # canary: v2 walks VALIDATED -> ... -> CANARY and gets 10 % of the traffic
    policy = as_json(roost(home, "canary", "m", "2", "--percent", "10"))
    assert policy["production"] == 1
    assert policy["canary"] == {"version": 2, "percent": 10.0}
    stored, states = _stored(home)
    assert stored == policy
    assert states == {1: "PRODUCTION", 2: "CANARY", 3: "REGISTERED"}

    # a second canary (here on a version that is not even VALIDATED) is refused; nothing changes
    err = failed_cleanly(roost(home, "canary", "m", "3", "--percent", "10"))
    assert err == (
        "error: canary: version 2 is the canary; promote or roll it back before starting another\n"
    )
    assert _stored(home) == (stored, states)

    for state in ("validating", "validated"):
        ok(roost(home, "transition", "m", "3", state, "--reason", "checked"))

    policy = as_json(roost(home, "shadow", "m", "3", "--percent", "50"))
    assert policy["shadows"] == [{"version": 3, "percent": 50.0}]
    assert policy["canary"] == {"version": 2, "percent": 10.0}

    policy = as_json(
        roost(home, "experiment", "start", "m", "--id", "e1", "--share", "60",
              "--variant", "control:1=50", "--variant", "3=50")
    )
    expected = {
        "production": 1,
        "canary": {"version": 2, "percent": 10.0},
        "experiments": [
            {
                "id": "e1",
                "salt": "e1",
                "share": 60.0,  # of the units the canary leaves: [0, 60) of the layer
                "offset": 0.0,
                "variants": [
                    {"version": 1, "weight": 50.0, "name": "control"},
                    {"version": 3, "weight": 50.0, "name": "v3"},
                ],
            }
        ],
        "shadows": [{"version": 3, "percent": 50.0}],
        "segments": [],
        "bandit": None,
        "flags": [],
    }
    assert policy == expected
    assert as_json(roost(home, "traffic", "show", "m")) == expected
    stored, states = _stored(home)
    assert stored == expected
    assert states == {1: "PRODUCTION", 2: "CANARY", 3: "VALIDATED"}

    # refused: weights not summing to 100, and a version the model does not have
    err = failed_cleanly(
        roost(home, "experiment", "start", "m", "--id", "e2", "--variant", "1=40", "--variant",
              "3=50")
    )
    assert err == (
        "error: experiments[1].variants: weights must sum to 100, got 90\n"
    )
    err = failed_cleanly(
        roost(home, "experiment", "start", "m", "--id", "e2", "--variant", "1=50", "--variant",
              "9=50")
    )
    assert err == "error: model 'm' has no version 9\n"
    # and one that does not fit in what e1 leaves of the experiment layer
    err = failed_cleanly(
        roost(home, "experiment", "start", "m", "--id", "e2", "--share", "50",
              "--variant", "1=50", "--variant", "3=50")
    )
    assert err == (
        "error: experiments[1].share: 50% does not fit; the largest free range is 40% "
        "(taken: 'e1' 60%)\n"
    )
    assert _stored(home) == (stored, states)

    policy = as_json(roost(home, "experiment", "stop", "m", "--id", "e1"))
    assert policy["experiments"] == []
    assert policy["shadows"] == [{"version": 3, "percent": 50.0}]
    policy = as_json(roost(home, "shadow", "m", "3", "--remove"))
    assert policy["shadows"] == []
    assert policy["canary"] == {"version": 2, "percent": 10.0}

    # rollback: the canary leaves the policy and v2 goes to ROLLBACK
    policy = as_json(roost(home, "canary", "m", "--rollback", "--reason", "bad"))
    assert policy["canary"] is None
    assert policy["production"] == 1
    assert _stored(home)[1] == {1: "PRODUCTION", 2: "ROLLBACK", 3: "VALIDATED"}

    # the whole policy at once
    new_policy = {
        "shadows": [{"version": 3, "percent": 25}],
        "segments": [
            {"id": "beta", "version": 3, "match": {"header": "X-Beta", "values": ["1"]}},
            {"id": "flagged", "version": 3, "match": {"flag": "new-model"}},
        ],
        "flags": ["dark-launch"],
    }
    policy = as_json(
        roost(home, "traffic", "set", "m", "--policy", json.dumps(new_policy),
              "--reason", "beta testers")
    )
    assert policy == {
        "production": 1,
        "canary": None,
        "experiments": [],
        "shadows": [{"version": 3, "percent": 25.0}],
        "segments": [
            {"id": "beta", "version": 3, "match": {"header": "x-beta", "values": ["1"]}},
            {"id": "flagged", "version": 3, "match": {"flag": "new-model", "values": []}},
        ],
        "bandit": None,
        "flags": ["dark-launch"],
    }
    assert _stored(home)[0] == policy

    # the audit trail: every change, none of the refused ones
    records = as_json(roost(home, "audit", "log", "--model", "m", "--json"))
    traffic = [json.loads(r["details"]) for r in records if r["action"] == "traffic"]
    assert [t["reason"] for t in traffic] == [
        "canary 10%",
        "shadow v3 50%",
        "start experiment e1",
        "stop experiment e1",
        "remove shadow v3",
        "beta testers",
    ]
    # (the record holds the resulting policy: production comes from the deployment)
    assert traffic[-1]["policy"] == {**policy, "production": 1}
    moves = [
        (r["version"], json.loads(r["details"])["to"], json.loads(r["details"])["reason"])
        for r in records
        if r["action"] == "transition" and r["version"] == 2
    ]
    assert moves[-4:] == [
        (2, "STAGING", "canary at 10%"),
        (2, "STAGING_TESTED", "canary at 10%"),
        (2, "CANARY", "canary at 10%"),
        (2, "ROLLBACK", "bad"),
    ]
    assert not any(
        r["version"] == 3 and json.loads(r["details"]).get("to") == "STAGING" for r in records
    )
