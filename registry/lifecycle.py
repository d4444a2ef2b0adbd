"""The model-version lifecycle state machine, exactly as REQUIREMENTS.md defines it."""

from __future__ import annotations

from enum import StrEnum

from registry.errors import InvalidRequest, InvalidTransition


class State(StrEnum):
    REGISTERED = "REGISTERED"
    VALIDATING = "VALIDATING"
    VALIDATED = "VALIDATED"
    FAILED = "FAILED"
    STAGING = "STAGING"
    STAGING_TESTED = "STAGING_TESTED"
    CANARY = "CANARY"
    PRODUCTION = "PRODUCTION"
    ROLLBACK = "ROLLBACK"
    DEPRECATED = "DEPRECATED"
    ARCHIVED = "ARCHIVED"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.REGISTERED: frozenset({State.VALIDATING}),
    State.VALIDATING: frozenset({State.VALIDATED, State.FAILED}),
    State.VALIDATED: frozenset({State.STAGING}),
    State.STAGING: frozenset({State.STAGING_TESTED}),
    State.STAGING_TESTED: frozenset({State.CANARY}),
    State.CANARY: frozenset({State.PRODUCTION, State.ROLLBACK}),
    State.PRODUCTION: frozenset({State.DEPRECATED}),
    State.DEPRECATED: frozenset({State.ARCHIVED}),
    State.ARCHIVED: frozenset(),
    State.FAILED: frozenset({State.REGISTERED}),
    State.ROLLBACK: frozenset({State.VALIDATED}),
}

# The path `deploy` walks from VALIDATED until staging and canary become real gates.
DEPLOY_PATH: tuple[State, ...] = (
    State.STAGING,
    State.STAGING_TESTED,
    State.CANARY,
    State.PRODUCTION,
)

# States in which a version may be a deployment's production version.
SERVABLE: frozenset[State] = frozenset({State.CANARY, State.PRODUCTION})

# States in which a traffic policy may send (or mirror) requests to a version.
ROUTABLE: frozenset[State] = frozenset(
    {State.VALIDATED, State.STAGING, State.STAGING_TESTED, State.CANARY, State.PRODUCTION}
)


def parse_state(value: str) -> State:
    """The State named by ``value`` (case-insensitive), or a clear error listing the states."""
    try:
        return State(value.strip().upper())
    except ValueError:
        names = ", ".join(s.value for s in State)
        raise InvalidRequest(f"unknown state '{value}'; states are: {names}") from None


def check_transition(current: State, target: State) -> None:
    """Raise InvalidTransition unless ``current -> target`` is in the table."""
    allowed = TRANSITIONS[current]
    if target in allowed:
        return
    if allowed:
        names = ", ".join(sorted(s.value for s in allowed))
        hint = f"allowed from {current.value}: {names}"
    else:
        hint = f"{current.value} is terminal"
    raise InvalidTransition(f"transition {current.value} -> {target.value} is not allowed; {hint}")
