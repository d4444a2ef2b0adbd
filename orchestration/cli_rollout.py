"""``roost promote`` (start a staged rollout), ``roost rollout ...`` and ``roost rollback``.

The same operations as the admin API (``/admin/models/{m}/rollout``, ``/admin/models/{m}/rollback``)
and the Dagster jobs: each is one call of the registry's rollout API (registry/rollout.py), one
transaction, audited under ``--actor`` (default ROOST_ACTOR). Refusals print ``error: ...`` on
stderr and exit 1.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import click

from registry import Registry, RolloutStatus, RoostError, parse_schedule

P = ParamSpec("P")
R = TypeVar("R")


def _cli() -> Any:
    return importlib.import_module("orchestration.cli")


def _registry() -> Registry:
    registry: Registry = _cli()._registry()
    return registry


def _read_registry() -> Registry:
    cli = _cli()
    registry: Registry = getattr(cli, "_read_registry", cli._registry)()
    return registry


def _errors(func: Callable[P, R]) -> Callable[P, R]:
    """Roost errors -> one ``error:`` line on stderr and exit code 1 (no traceback)."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except RoostError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(1)

    return wrapper


def _actor(registry: Registry, actor: str | None) -> str:
    return actor or registry.default_actor


def _when(value: Any) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(status: RolloutStatus) -> str:
    """One line: where the rollout is."""
    where = f"{status.phase.value}"
    if status.step >= 0:
        where += f", step {status.step + 1} of {len(status.schedule)} at {status.percent:g}%"
    if status.paused:
        where += ", PAUSED"
    return f"{status.model}: rollout of version {status.version} is {where}"


def status_table(status: RolloutStatus) -> str:
    nxt = status.next_percent
    rows = [
        ("model", status.model),
        ("version", str(status.version)),
        ("phase", status.phase.value + (" (paused)" if status.paused else "")),
        ("schedule", ", ".join(f"{p:g}%" for p in status.schedule)),
        (
            "step",
            "-" if status.step < 0 else f"{status.step + 1} of {len(status.schedule)}",
        ),
        ("percent", f"{status.percent:g}%"),
        ("next", "-" if not status.active else ("promote" if nxt is None else f"{nxt:g}%")),
        ("decision", status.decision or "-"),
        ("reason", status.reason or "-"),
        ("last analysis", json.dumps(status.last_analysis, default=str)
         if status.last_analysis is not None else "-"),
        ("replaced", "-" if status.replaced_version is None else str(status.replaced_version)),
        ("started", _when(status.started_at)),
        ("step started", _when(status.step_started_at)),
        ("updated", _when(status.updated_at)),
        ("by", status.actor),
        ("revision", str(status.revision)),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


@click.command("promote")
@click.argument("model")
@click.argument("version", type=int)
@click.option("--schedule", default=None,
              help="Canary percents, increasing, ending at 100 (default: 1,5,10,25,50,100).")
@click.option("--reason", default="promote", help="Why (recorded in the audit trail).")
@click.option("--actor", default=None, help="Who (default: ROOST_ACTOR).")
@click.option("--no-staging-tests", "skip_tests", is_flag=True,
              help="Only start the rollout (STAGING); run the staging tests and the canary from "
                   "the model's `<model>_rollout` job in the Dagster UI instead.")
@_errors
def promote(model: str, version: int, schedule: str | None, reason: str,
            actor: str | None, skip_tests: bool) -> None:
    """Start the staged rollout of a VALIDATED VERSION: staging tests against a staging
    gateway, then the canary's first step; the canary sensor walks the rest."""
    from assets.spec import all_specs
    from assets.staging import run_staging_tests

    settings = _cli()._settings()
    spec = next((s for s in all_specs(settings.home) if s.name == model), None)
    steps = parse_schedule(schedule) if schedule is not None else (
        tuple(spec.canary.schedule) if spec is not None else None  # the spec's, as the job
    )
    registry = _registry()
    who = _actor(registry, actor)
    if spec is None and not skip_tests:
        raise RoostError(
            f"no model spec for '{model}': its staging tests need one (`roost model add "
            f"{model} ...`), or pass --no-staging-tests"
        )
    status = registry.start_rollout(model, version, schedule=steps, actor=who, reason=reason)
    click.echo(
        f"{describe(status)}; canary schedule {', '.join(f'{p:g}%' for p in status.schedule)} "
        f"(see `roost rollout status {model}`)"
    )
    if skip_tests or spec is None:
        return
    click.echo(f"running {model}'s staging tests against a staging gateway ...")
    report = run_staging_tests(spec, version, registry, settings)
    evidence = report.evidence()
    if not report.passed:
        registry.staging_failed(model, version, reason=f"staging tests: {report.reason}",
                                evidence=evidence, actor=who)
        raise RoostError(f"staging tests of {model} v{version} failed: {report.reason}")
    registry.staging_passed(model, version, evidence=evidence, actor=who)
    status = registry.begin_canary(model, version, actor=who)
    click.echo(f"staging tests passed ({report.reason}); canary at {status.percent:g}%: the "
               "canary sensor steps, promotes or rolls it back")


@click.group("rollout")
def rollout() -> None:
    """Watch and steer a model's staged rollout (started with `roost promote`)."""


@rollout.command("status")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_errors
def rollout_status(model: str, as_json: bool) -> None:
    """Phase, step, percent, pause, last analysis and decision of MODEL's latest rollout."""
    status = _read_registry().get_rollout(model)
    if as_json:
        click.echo(json.dumps(None if status is None else status.to_dict(), indent=2))
    elif status is None:
        click.echo(f"{model}: no rollout (start one with `roost promote {model} VERSION`)")
    else:
        click.echo(status_table(status))


def _steer(name: str, verb: str) -> None:
    @rollout.command(name)
    @click.argument("model")
    @click.option("--reason", default=f"{verb} by operator", help="Why (audit trail).")
    @click.option("--actor", default=None, help="Who (default: ROOST_ACTOR).")
    @_errors
    def steer(model: str, reason: str, actor: str | None) -> None:
        registry = _registry()
        act = getattr(registry, f"{name}_rollout")
        status: RolloutStatus = act(model, actor=_actor(registry, actor), reason=reason)
        click.echo(describe(status))

    steer.__doc__ = f"{verb.capitalize()} MODEL's active rollout."


_steer("pause", "paused")
_steer("resume", "resumed")
_steer("cancel", "cancelled")


@rollout.command("advance")
@click.argument("model")
@click.option("--reason", default="advanced by operator", help="Why (audit trail).")
@click.option("--actor", default=None, help="Who (default: ROOST_ACTOR).")
@_errors
def rollout_advance(model: str, reason: str, actor: str | None) -> None:
    """Take the next canary step now (or promote after the last), even while paused."""
    registry = _registry()
    current = registry.get_rollout(model)
    revision = 0 if current is None else current.revision
    status = registry.advance_rollout(
        model, expected_revision=revision, analysis={"operator": reason},
        actor=_actor(registry, actor), manual=True,
    )
    click.echo(describe(status))


@rollout.command("abort")
@click.argument("model")
@click.option("--reason", required=True, help="Why (audit trail).")
@click.option("--actor", default=None, help="Who (default: ROOST_ACTOR).")
@_errors
def rollout_abort(model: str, reason: str, actor: str | None) -> None:
    """Roll the canary back now: its traffic to 0, CANARY -> ROLLBACK."""
    registry = _registry()
    status = registry.roll_back_rollout(model, reason=reason, actor=_actor(registry, actor))
    click.echo(describe(status))


@click.command("rollback")
@click.argument("model")
@click.option("--to", "to_version", type=int, default=None,
              help="The DEPRECATED version to bring back (default: the previous production one).")
@click.option("--reason", default="rollback by operator", help="Why (audit trail).")
@click.option("--actor", default=None, help="Who (default: ROOST_ACTOR).")
@_errors
def rollback(model: str, to_version: int | None, reason: str, actor: str | None) -> None:
    """Bring back the previous production version of MODEL (one transaction, audited)."""
    registry = _registry()
    before = registry.get_deployment(model)
    info = registry.rollback(
        model, to_version=to_version, reason=reason, actor=_actor(registry, actor)
    )
    was = None if before is None else before.production_version
    click.echo(f"{model}: production version is {info.version} again (was {was})")


def add_rollout_commands(group: click.Group) -> None:
    """Register ``promote``, ``rollout`` and ``rollback`` on the ``roost`` group."""
    for command in (promote, rollout, rollback):
        group.add_command(command)
