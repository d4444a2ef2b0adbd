"""The model-version lifecycle state machine, as REQUIREMENTS.md defines it, plus ONE extension.

:data:`TRANSITIONS` is the requirements' table verbatim. Roost adds exactly one move to it,
kept apart in :data:`ROLLBACK_TRANSITIONS`: **DEPRECATED -> PRODUCTION, only as a rollback**
(``check_transition(..., rollback=True)``), which is what ``Registry.rollback`` /
``roost rollback MODEL [--to VERSION]`` does to bring the previous production version back in
one transaction (the current one goes PRODUCTION -> DEPRECATED, as the table allows). Asked for
by hand (``Registry.transition``, ``roost transition``) the move is refused with a message
pointing at ``roost rollback``: a rollback must also swap the deployment's production version,
cancel any rollout and be audited as one, which a bare state change would not do.
"""

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

# Roost's one extension of the table: allowed only with ``rollback=True`` (Registry.rollback).
ROLLBACK_TRANSITIONS: dict[State, frozenset[State]] = {
    State.DEPRECATED: frozenset({State.PRODUCTION}),
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


def check_transition(current: State, target: State, *, rollback: bool = False) -> None:
    """Raise InvalidTransition unless ``current -> target`` is in the table.

    ``rollback=True`` also allows :data:`ROLLBACK_TRANSITIONS` (only ``Registry.rollback``
    passes it); without it, such a move is refused with a pointer to ``roost rollback``.
    """
    allowed = TRANSITIONS[current]
    if target in allowed:
        return
    extra = ROLLBACK_TRANSITIONS.get(current, frozenset())
    if target in extra:
        if rollback:
            return
        raise InvalidTransition(
            f"transition {current.value} -> {target.value} is only allowed as a rollback: use "
            "`roost rollback MODEL [--to VERSION]` (POST /admin/models/MODEL/rollback), which "
            "also moves the current production version to DEPRECATED; allowed from "
            f"{current.value}: " + ", ".join(sorted(s.value for s in allowed))
        )
    if allowed:
        names = ", ".join(sorted(s.value for s in allowed))
        hint = f"allowed from {current.value}: {names}"
    else:
        hint = f"{current.value} is terminal"
    raise InvalidTransition(f"transition {current.value} -> {target.value} is not allowed; {hint}")
