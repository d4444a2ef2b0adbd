"""The state machine, generated from the requirements' table: every legal move passes,
every other is refused with an error naming the allowed transitions."""

from __future__ import annotations

import itertools

import pytest

from registry import TRANSITIONS, InvalidTransition, State, check_transition

# The requirements' table, written out independently of the implementation.
REQUIRED = {
    "REGISTERED": {"VALIDATING"},
    "VALIDATING": {"VALIDATED", "FAILED"},
    "VALIDATED": {"STAGING"},
    "STAGING": {"STAGING_TESTED"},
    "STAGING_TESTED": {"CANARY"},
    "CANARY": {"PRODUCTION", "ROLLBACK"},
    "PRODUCTION": {"DEPRECATED"},
    "DEPRECATED": {"ARCHIVED"},
    "ARCHIVED": set(),
    "FAILED": {"REGISTERED"},
    "ROLLBACK": {"VALIDATED"},
}

ALL_PAIRS = list(itertools.product(State, State))


def test_table_matches_requirements() -> None:
    assert {s.value: {t.value for t in ts} for s, ts in TRANSITIONS.items()} == REQUIRED


@pytest.mark.parametrize(
    ("src", "dst"), [(s, d) for s, d in ALL_PAIRS if d.value in REQUIRED[s.value]]
)
def test_legal_transition_passes(src: State, dst: State) -> None:
    check_transition(src, dst)


@pytest.mark.parametrize(
    ("src", "dst"), [(s, d) for s, d in ALL_PAIRS if d.value not in REQUIRED[s.value]]
)
def test_illegal_transition_refused(src: State, dst: State) -> None:
    with pytest.raises(InvalidTransition) as err:
        check_transition(src, dst)
    message = str(err.value)
    assert f"{src.value} -> {dst.value}" in message
    if REQUIRED[src.value]:
        for allowed in REQUIRED[src.value]:
            assert allowed in message
    else:
        assert "terminal" in message
