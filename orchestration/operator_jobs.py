"""Operator jobs: promote, pause, resume and roll back from the Dagster UI's launchpad.

Each job takes typed config (a :class:`dagster.Config`), makes one registry call (one
transaction, audited) and says what happened in its log, its output metadata and its run tags
(``roost/model``, ``roost/action``, ``roost/result``). The audit actor is ``dagster:<user>``
when the run carries the launching user's ``user`` tag (Dagster+), else ``dagster:<run id>``.
A refusal (an unknown model, a rollout already running, nothing to roll back to) fails the run
with the registry's message. Same operations as ``roost promote|rollout|rollback``.

``promote`` starts the staged rollout (VALIDATED -> STAGING), then, unless
``run_staging_tests`` is false, runs the spec's staging tests against a staging gateway
(:func:`assets.staging.run_staging_tests`), records them, and puts the canary at the first step
of its schedule; both steps are reported as materializations of ``<p>_staging_tests`` and
``<p>_canary_deployment``. From there the canary sensor walks the schedule.
"""

# Dagster reads these annotations at definition time: no `from __future__ import annotations`.
from typing import Any

from dagster import (
    AssetMaterialization,
    Config,
    Failure,
    JobDefinition,
    MetadataValue,
    OpExecutionContext,
    Output,
    job,
    op,
)

from assets.resources import RegistryResource
from assets.spec import ModelSpec, SpecError, all_specs
from assets.staging import run_staging_tests
from registry import Registry, RoostError

OPERATOR_JOBS = ("promote", "pause_rollout", "resume_rollout", "rollback")


def operator_actor(context: OpExecutionContext) -> str:
    """``dagster:<user>`` if the run says who launched it, else ``dagster:<run id>``."""
    user = context.run.tags.get("user")
    return f"dagster:{user}" if user else f"dagster:{context.run_id}"


def _tag(context: OpExecutionContext, **tags: str) -> None:
    context.instance.add_run_tags(context.run_id, {f"roost/{k}": v for k, v in tags.items()})


def _fail(exc: RoostError) -> Failure:
    return Failure(description=exc.message, metadata={"error": type(exc).__name__})


def _find_spec(registry: RegistryResource, model: str) -> ModelSpec | None:
    try:
        return next((s for s in all_specs(registry.settings().home) if s.name == model), None)
    except SpecError:
        return None


class PromoteConfig(Config):
    """Which validated version to roll out, and how."""

    model: str
    version: int
    schedule: list[float] | None = None
    """Canary percents, e.g. [1, 5, 25, 100]; default: the model spec's, else the registry's."""
    reason: str = "promoted from the Dagster UI"
    run_staging_tests: bool = True
    """False: only start the rollout (STAGING); the model's rollout job or `roost` goes on."""


class RolloutActionConfig(Config):
    """The model whose rollout to pause or resume, and why."""

    model: str
    reason: str


class RollbackConfig(Config):
    """The model to roll back, optionally to which version, and why."""

    model: str
    to_version: int | None = None
    """Default: the version most recently replaced as production."""
    reason: str


@op(description="Start the staged rollout of a validated version (VALIDATED -> STAGING).")
def start_rollout(
    context: OpExecutionContext, config: PromoteConfig, registry: RegistryResource
) -> dict[str, Any]:
    """Start the rollout and pass on what the staging step needs."""
    spec = _find_spec(registry, config.model)
    schedule = config.schedule or (spec.canary.schedule if spec else None)
    actor = operator_actor(context)
    reg = registry.get_registry()
    try:
        status = reg.start_rollout(config.model, config.version, schedule=schedule, actor=actor,
                                   reason=config.reason)
    except RoostError as exc:
        raise _fail(exc) from None
    finally:
        reg.close()
    context.log.info(f"{actor} started the rollout of {config.model} v{config.version}: "
                     f"{status.phase.value}, schedule {list(status.schedule)}")
    _tag(context, model=config.model, version=str(config.version), action="promote",
         result=status.phase.value)
    context.add_output_metadata({"rollout": status.id, "phase": status.phase.value,
                                 "schedule": str(list(status.schedule)), "actor": actor})
    return {"model": config.model, "version": config.version, "actor": actor,
            "stage": config.run_staging_tests}


@op(description="Run the staging tests and start the canary at the first step of its schedule.")
def stage_and_begin_canary(
    context: OpExecutionContext, started: dict[str, Any], registry: RegistryResource
) -> dict[str, Any]:
    """Staging tests -> STAGING_TESTED (or FAILED) -> the canary's first step."""
    model, version, actor = started["model"], int(started["version"]), started["actor"]
    if not started["stage"]:
        context.log.info(f"{model} v{version} is in STAGING; staging tests not requested")
        return {**started, "phase": "STAGING"}
    spec = _find_spec(registry, model)
    if spec is None:
        raise Failure(f"no model spec for {model!r}: cannot run its staging tests (add one with "
                      "`roost model add`, or promote with run_staging_tests: false)")
    reg = registry.get_registry()
    try:
        report = run_staging_tests(spec, version, reg, registry.settings())
        evidence = report.evidence()
        context.log_event(AssetMaterialization(
            f"{spec.prefix}_staging_tests", description=report.reason,
            metadata={k: ("none" if v is None else v) for k, v in evidence.items()
                      if isinstance(v, str | int | float | bool) or v is None},
        ))
        if not report.passed:
            reg.staging_failed(model, version, reason=f"staging tests: {report.reason}",
                               evidence=evidence, actor=actor)
            _tag(context, result="FAILED")
            raise Failure(f"staging tests of {model} v{version} failed: {report.reason}")
        reg.staging_passed(model, version, evidence=evidence, actor=actor)
        status = reg.begin_canary(model, version, actor=actor)
    except RoostError as exc:
        raise _fail(exc) from None
    finally:
        reg.close()
    context.log_event(AssetMaterialization(
        f"{spec.prefix}_canary_deployment", description=f"canary at {status.percent:g}%",
        metadata={"model": model, "version": version, "percent": status.percent,
                  "phase": status.phase.value},
    ))
    context.log.info(f"{model} v{version}: staging tests passed ({report.reason}); canary at "
                     f"{status.percent:g}%, the canary sensor takes it from here")
    _tag(context, result=status.phase.value)
    return {**started, "phase": status.phase.value, "percent": status.percent}


def _rollout_action(context: OpExecutionContext, config: RolloutActionConfig,
                    registry: RegistryResource, action: str) -> Output[dict[str, Any]]:
    actor = operator_actor(context)
    reg: Registry = registry.get_registry()
    try:
        call = reg.pause_rollout if action == "pause" else reg.resume_rollout
        status = call(config.model, actor=actor, reason=config.reason)
    except RoostError as exc:
        raise _fail(exc) from None
    finally:
        reg.close()
    where = "paused" if status.paused else "running"
    context.log.info(f"{actor}: {action} {config.model} v{status.version} ({config.reason}): "
                     f"{status.phase.value} at {status.percent:g}%, {where}")
    _tag(context, model=config.model, version=str(status.version), action=action, result=where)
    value: dict[str, Any] = {"model": config.model, "version": status.version,
                             "phase": status.phase.value, "percent": status.percent,
                             "paused": status.paused, "revision": status.revision}
    return Output(value, metadata={**value, "reason": config.reason, "actor": actor})


@op(description="Pause a model's rollout: the canary sensor stops stepping it.")
def pause_rollout_op(
    context: OpExecutionContext, config: RolloutActionConfig, registry: RegistryResource
) -> Output[dict[str, Any]]:
    """Pause the rollout."""
    return _rollout_action(context, config, registry, "pause")


@op(description="Resume a paused rollout (its current step starts over).")
def resume_rollout_op(
    context: OpExecutionContext, config: RolloutActionConfig, registry: RegistryResource
) -> Output[dict[str, Any]]:
    """Resume the rollout."""
    return _rollout_action(context, config, registry, "resume")


@op(description="Bring a previous production version back (one transaction, audited).")
def rollback_op(
    context: OpExecutionContext, config: RollbackConfig, registry: RegistryResource
) -> Output[dict[str, Any]]:
    """Roll the model back to ``to_version`` or the version production last replaced."""
    actor = operator_actor(context)
    reg = registry.get_registry()
    try:
        before = reg.get_deployment(config.model)
        info = reg.rollback(config.model, to_version=config.to_version, reason=config.reason,
                            actor=actor)
    except RoostError as exc:
        raise _fail(exc) from None
    finally:
        reg.close()
    previous = before.production_version if before else None
    context.log.warning(f"{actor} rolled {config.model} back from v{previous} to "
                        f"v{info.version}: {config.reason}")
    _tag(context, model=config.model, version=str(info.version), action="rollback",
         result=f"v{info.version}")
    value: dict[str, Any] = {"model": config.model, "production_version": info.version,
                             "previous_version": previous if previous is not None else "none"}
    return Output(value, metadata={**value, "reason": config.reason, "actor": actor,
                                   "state": MetadataValue.text(info.state.value)})


@job(description="Start a staged rollout: staging tests, then the canary's first step.",
     tags={"roost/operator": "promote"})
def promote() -> None:
    stage_and_begin_canary(start_rollout())


@job(description="Pause a model's rollout.", tags={"roost/operator": "pause_rollout"})
def pause_rollout() -> None:
    pause_rollout_op()


@job(description="Resume a model's paused rollout.", tags={"roost/operator": "resume_rollout"})
def resume_rollout() -> None:
    resume_rollout_op()


@job(description="Roll a model back to a previous production version.",
     tags={"roost/operator": "rollback"})
def rollback() -> None:
    rollback_op()


def operator_jobs() -> list[JobDefinition]:
    """The operator jobs, for the code location."""
    return [promote, pause_rollout, resume_rollout, rollback]
