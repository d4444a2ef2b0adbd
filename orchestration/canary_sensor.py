"""The canary sensor: every tick, each running canary is compared with production and advanced,
held or rolled back.

For every active rollout in phase CANARY that is not paused, the sensor reads production's and
the canary's requests since the current step started (``step_started_at``) from the prediction
and feedback logs (:func:`analysis.samples.read_canary`) and calls :func:`analysis.canary.compare`
with the model spec's canary settings at look ``step + 1`` of ``len(schedule)``:

* ``rollback``: ``Registry.roll_back_rollout`` (canary traffic to 0 at once, the version to
  ROLLBACK, the reason in the audit trail), an alert event (:mod:`orchestration.alert_events`)
  and a run of the ``canary_rollback_report`` job whose event log says why;
* before the step has lasted the spec's ``step_interval_s`` nothing else happens (waiting);
* at a 100 % step production answers nothing, so there is nothing to compare with (the arm
  would hold below ``min_requests`` forever): the concurrent comparisons of the earlier steps
  stand and the canary is promoted after the dwell (a rollback found meanwhile still wins);
* then ``advance``: ``advance_rollout`` (the next percent, or the promotion after the last step);
* then ``hold`` (too few requests): ``record_rollout_analysis``, once per record revision.

Every registry call passes the revision the sensor read (compare-and-set): overlapping ticks, a
restarted daemon or an operator acting meanwhile make the call a ``Conflict`` that is logged and
skipped, so a rollout never steps twice. The JSON cursor ``{"models": {model: {"rollout": id,
"revision": r, "decision": d, "action": a, "at": iso}}}`` records what the sensor last handled
per model (the revision is the record's after the sensor's write), so an unchanged hold is not
written again. Writes show on the model's ``<p>_canary_deployment`` asset as an
``AssetObservation`` carrying the analysis as markdown.
"""

# Dagster reads these annotations at definition time: no `from __future__ import annotations`.
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    AssetObservation,
    Config,
    DefaultSensorStatus,
    MetadataValue,
    OpExecutionContext,
    Output,
    RunConfig,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    job,
    op,
    sensor,
)

from analysis.canary import CanaryAnalysis, CanaryConfig, compare
from analysis.samples import read_canary
from assets.resources import RegistryResource
from assets.spec import CanarySettings, ModelSpec
from orchestration.alert_events import emit_alert
from registry import Conflict, Registry, RoostSettings
from registry.rollout import RolloutPhase, RolloutStatus
from registry.storage import Location, logs_location

log = logging.getLogger("roost.orchestration")

CANARY_SENSOR = "canary_sensor"
ACTOR = "dagster:canary_sensor"
REPORT_JOB = "canary_rollback_report"
REPORT_OP = "record_canary_rollback"
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Outcome:
    """What the sensor did with one rollout in one tick."""

    model: str
    version: int
    rollout: int
    action: str
    """``advanced``, ``promoted``, ``rolled_back``, ``held`` (recorded), ``holding`` (already
    recorded at this revision), ``waiting`` (no rollback, and the step's dwell time has not passed)
    or ``stale`` (someone else changed the record first)."""
    reason: str
    revision: int
    """The record's revision after this outcome."""
    percent: float
    analysis: CanaryAnalysis | None = None

    @property
    def written(self) -> bool:
        return self.action in ("advanced", "promoted", "rolled_back", "held")

    def summary(self) -> str:
        return f"{self.model} v{self.version}: {self.action} ({self.reason})"


def canary_config(spec: ModelSpec | None, status: RolloutStatus) -> tuple[CanaryConfig, float]:
    """The analysis settings of a rollout (the spec's, defaults without one) and its dwell time."""
    settings = spec.canary if spec is not None else CanarySettings()
    config = CanaryConfig(alpha=settings.alpha, looks=max(len(status.schedule), 1),
                          min_requests=settings.min_requests,
                          p99_ratio_budget=settings.p99_ratio_budget,
                          p99_floor_ms=settings.p99_floor_ms,
                          min_labelled=settings.min_labelled,
                          require_labels=settings.require_labels)
    return config, settings.step_interval_s


def evaluate_rollout(
    reg: Registry,
    status: RolloutStatus,
    spec: ModelSpec | None,
    logs_dir: Path,
    now: datetime,
    handled: Mapping[str, Any] | None = None,
    *,
    location: Location | None = None,
) -> Outcome:
    """Analyse one canary step and act on the decision, compare-and-set on ``status.revision``.

    ``location``: where the sealed prediction log lives (:func:`registry.storage.logs_location`;
    ``ROOST_LOGS_URL`` may put it on object storage); None: under ``logs_dir``."""
    config, dwell_s = canary_config(spec, status)
    since = status.step_started_at or status.started_at
    production, canary = read_canary(logs_dir, status.model, since, now,
                                     canary_version=status.version, logs_location=location)
    look = min(status.step + 1, config.looks)
    analysis = compare(production, canary, config, look)
    if (status.percent >= 100 and analysis.decision == "hold"
            and production.requests < config.min_requests):
        analysis = replace(analysis, decision="advance", reason=(
            f"the canary serves all traffic ({production.requests} production requests in the "
            f"step): the earlier steps' comparisons stand; {analysis.reason}"))
    facts = {**analysis.to_dict(), "window_start": since.isoformat(),
             "window_end": now.isoformat(), "step": status.step, "percent": status.percent}

    def outcome(action: str, reason: str, after: RolloutStatus) -> Outcome:
        return Outcome(status.model, status.version, status.id, action, reason, after.revision,
                       after.percent, analysis)

    try:
        if analysis.decision == "rollback":
            reason = f"canary analysis, look {look}/{config.looks}: {analysis.reason}"
            after = reg.roll_back_rollout(status.model, reason=reason, analysis=facts,
                                          actor=ACTOR, expected_revision=status.revision)
            return outcome("rolled_back", reason, after)
        waited = status.seconds_in_step(now)
        if waited < dwell_s:
            return outcome("waiting", f"{analysis.decision}: {analysis.reason}; step "
                                      f"{waited:.0f}s of {dwell_s:g}s", status)
        if analysis.decision == "advance":
            after = reg.advance_rollout(status.model, expected_revision=status.revision,
                                        analysis=facts, actor=ACTOR)
            action = "promoted" if after.phase is RolloutPhase.PROMOTED else "advanced"
            return outcome(action, f"{analysis.reason}; now {after.percent:g}%", after)
        if _already(handled, status, "hold"):
            return outcome("holding", analysis.reason, status)
        after = reg.record_rollout_analysis(status.model, expected_revision=status.revision,
                                            analysis=facts, decision="hold", actor=ACTOR)
        return outcome("held", analysis.reason, after)
    except Conflict as exc:
        return outcome("stale", f"not {analysis.decision}: {exc.message}", status)


def _already(handled: Mapping[str, Any] | None, status: RolloutStatus, decision: str) -> bool:
    """Whether the cursor says ``decision`` was already recorded at this record revision."""
    if not handled:
        return False
    seen = (handled.get("rollout"), handled.get("revision"), handled.get("decision"))
    return seen == (status.id, status.revision, decision)


def canary_tick(
    reg: Registry,
    specs: Mapping[str, ModelSpec],
    logs_dir: Path,
    cursor: Mapping[str, Any],
    now: datetime,
    *,
    location: Location | None = None,
) -> tuple[list[Outcome], list[str], dict[str, Any]]:
    """One tick over every running, unpaused canary: (outcomes, notes on skipped ones, cursor).
    ``location``: as for :func:`evaluate_rollout`."""
    handled: dict[str, Any] = dict(cursor.get("models", {}))
    outcomes: list[Outcome] = []
    notes: list[str] = []
    active: set[str] = set()
    for status in reg.list_rollouts(active_only=True):
        active.add(status.model)
        if status.phase is not RolloutPhase.CANARY:
            notes.append(f"{status.model} v{status.version}: {status.phase.value}, no canary yet")
            continue
        if status.paused:
            notes.append(f"{status.model} v{status.version}: paused at {status.percent:g}%")
            continue
        try:
            result = evaluate_rollout(reg, status, specs.get(status.model), logs_dir, now,
                                      handled.get(status.model), location=location)
        except Exception as exc:  # one model's unreadable log must not stop the others' canaries
            log.exception("canary analysis of %s v%s failed", status.model, status.version)
            notes.append(f"{status.model} v{status.version}: analysis failed, left at "
                         f"{status.percent:g}% ({type(exc).__name__}: {exc})")
            continue
        outcomes.append(result)
        handled[status.model] = {
            "rollout": result.rollout, "revision": result.revision, "action": result.action,
            "decision": result.analysis.decision if result.analysis else None,
            "at": now.isoformat(),
        }
    kept = {m: v for m, v in handled.items() if m in active}
    return outcomes, notes, {"models": kept}


def load_cursor(text: str | None) -> dict[str, Any]:
    """The sensor's cursor (an empty one for ``None`` or text that is not a JSON object)."""
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def canary_key(spec: ModelSpec) -> AssetKey:
    return AssetKey(f"{spec.prefix}_canary_deployment")


def observation(result: Outcome, spec: ModelSpec) -> AssetObservation:
    """The outcome on the model's canary-deployment asset, analysis as markdown."""
    analysis = result.analysis
    return AssetObservation(
        asset_key=canary_key(spec),
        description=result.summary(),
        metadata={
            "model": result.model, "version": result.version, "rollout": result.rollout,
            "action": result.action, "decision": analysis.decision if analysis else "none",
            "reason": result.reason, "percent": result.percent, "revision": result.revision,
            "analysis": MetadataValue.md(analysis.to_markdown() if analysis else result.reason),
        },
    )


class RollbackReportConfig(Config):
    """Why the canary sensor rolled a canary back."""

    model: str
    version: int
    rollout: int
    reason: str
    analysis_markdown: str = ""


@op(name=REPORT_OP, description="Record in the run why the canary sensor rolled a canary back.")
def record_canary_rollback(
    context: OpExecutionContext, config: RollbackReportConfig
) -> Output[dict[str, Any]]:
    """Log the rollback's reason and analysis in the run's event log."""
    context.log.warning(
        f"{config.model} v{config.version} was rolled back by the canary sensor "
        f"(rollout {config.rollout}): {config.reason}"
    )
    value: dict[str, Any] = {"model": config.model, "version": config.version,
                             "rollout": config.rollout, "reason": config.reason}
    return Output(value, metadata={**value,
                                   "analysis": MetadataValue.md(config.analysis_markdown)})


@job(name=REPORT_JOB, description="Says why the canary sensor rolled a canary back.",
     tags={"roost/kind": "canary_rollback"})
def canary_rollback_report() -> None:
    record_canary_rollback()


def rollback_run(result: Outcome) -> RunRequest:
    """The run of ``canary_rollback_report`` that tells why ``result`` rolled back."""
    markdown = result.analysis.to_markdown() if result.analysis else ""
    return RunRequest(
        run_key=f"{result.model}/rollout-{result.rollout}/rollback",
        job_name=REPORT_JOB,
        run_config=RunConfig(ops={REPORT_OP: RollbackReportConfig(
            model=result.model, version=result.version, rollout=result.rollout,
            reason=result.reason, analysis_markdown=markdown,
        )}),
        tags={"roost/model": result.model, "roost/version": str(result.version),
              "roost/rollout": str(result.rollout), "roost/decision": "rollback"},
    )


def alert_for(logs_dir: Path, result: Outcome, now: datetime) -> None:
    """The CanaryRollback alert event of a rolled-back canary."""
    emit_alert(
        logs_dir, alertname="CanaryRollback", model=result.model, version=result.version,
        severity="critical", labels={"rollout": str(result.rollout)}, starts_at=now,
        summary=f"{result.model} v{result.version}: canary rolled back",
        description=result.reason,
    )


def make_canary_sensor(
    specs: Sequence[ModelSpec],
    *,
    interval_s: int | None = None,
    clock: Clock | None = None,
    name: str = CANARY_SENSOR,
) -> SensorDefinition:
    """The sensor that advances, holds or rolls back every running canary each tick."""
    by_name = {spec.name: spec for spec in specs}
    now_of = clock or _utcnow

    @sensor(name=name, minimum_interval_seconds=interval_s or RoostSettings().canary_tick_s,
            jobs=[canary_rollback_report], default_status=DefaultSensorStatus.RUNNING,
            description="Compares each running canary with production and advances, holds or "
                        "rolls it back.")
    def canary(context: SensorEvaluationContext, registry: RegistryResource) -> SensorResult:
        now = now_of()
        settings = registry.settings()
        logs_dir = settings.logs_dir
        reg = registry.get_registry()
        try:
            outcomes, notes, cursor = canary_tick(
                reg, by_name, logs_dir, load_cursor(context.cursor), now,
                location=logs_location(settings))
        finally:
            reg.close()
        events: list[AssetObservation] = []
        runs: list[RunRequest] = []
        for result in outcomes:
            context.log.info(result.summary())
            if result.action == "rolled_back":
                alert_for(logs_dir, result, now)
                runs.append(rollback_run(result))
            spec = by_name.get(result.model)
            if result.written and spec is not None:
                events.append(observation(result, spec))
        text = json.dumps(cursor, sort_keys=True)
        if not events and not runs:
            lines = [r.summary() for r in outcomes] + notes
            return SensorResult(skip_reason="; ".join(lines) or "no running canary", cursor=text)
        return SensorResult(run_requests=runs, asset_events=events, cursor=text)

    return canary
