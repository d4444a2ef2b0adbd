"""The staged path of a validated version: staging -> staging tests -> canary -> production.

``<p>_staging_deployment``
    ``Registry.start_rollout`` (VALIDATED -> STAGING, a rollout record with the spec's canary
    schedule). A model's *first* version has no production to compare a canary with, and the
    registry refuses rollouts without one: its walk is plain, audited transitions instead.
``<p>_staging_tests``
    :func:`assets.staging.run_staging_tests` against a staging gateway; ``staging_passed`` or
    ``staging_failed`` (the reason is in the audit trail and the rollout record); three blocking
    checks show error rate, latency and agreement with production.
``<p>_canary_deployment``
    ``Registry.begin_canary``: the canary takes ``schedule[0]`` percent of traffic; from then on
    the canary *sensor* advances or rolls back the rollout. A first version goes straight to 100 %
    and is promoted at once (there is nothing to compare it with).
``<p>_production_deployment``
    Materialized only when the version *is* production: at once for a first version; otherwise
    this step records nothing and the registry observer (:mod:`assets.observer`) reports the
    materialization when the rollout reaches PROMOTED.
"""

# Dagster reads these annotations at definition time: no `from __future__ import annotations`.
from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    Failure,
    MetadataValue,
    Output,
    asset,
    asset_check,
)

from assets.resources import RegistryResource
from assets.spec import ModelSpec
from assets.staging import run_staging_tests
from registry import Registry, State

ACTOR = "dagster"
STAGING_CHECKS = ("error_rate", "latency", "agreement")
FIRST = "first"  # a first version: transitions, no rollout record
ROLLOUT = "rollout"
NOOP = "noop"  # the version already serves production


def _production(reg: Registry, model: str) -> int | None:
    deployment = reg.get_deployment(model)
    return deployment.production_version if deployment else None


def production_metadata(reg: Registry, model: str) -> dict[str, Any]:
    deployment = reg.get_deployment(model)
    return {
        "model": model,
        "production_version": deployment.production_version if deployment else None,
        "generation": deployment.generation if deployment else reg.generation(),
        "predict_url": MetadataValue.text(f"/v2/models/{model}/infer"),
    }


def _walk_first(reg: Registry, model: str, version: int, target: State, reason: str) -> None:
    if reg.get_version(model, version).state is not target:
        reg.transition(model, version, target, reason=reason, actor=ACTOR)


def rollout_assets(spec: ModelSpec) -> tuple[list[AssetsDefinition], list[AssetChecksDefinition]]:
    """The four deployment assets of ``spec`` and the staging tests' checks."""
    p, model = spec.prefix, spec.name

    @asset(name=f"{p}_staging_deployment", group_name=p,
           ins={"validated": AssetIn(f"{p}_validation")}, compute_kind="roost")
    def staging_deployment(
        registry: RegistryResource, validated: dict[str, Any]
    ) -> Output[dict[str, Any]]:
        """The validated version deployed to staging (a rollout starts)."""
        version = int(validated["version"])
        if not validated["passed"]:
            raise Failure(f"version {version} of {model} failed validation; not staging it")
        reg = registry.get_registry()
        try:
            production = _production(reg, model)
            state = reg.get_version(model, version).state
            if production == version and state is State.PRODUCTION:
                mode = NOOP
            elif production is None:
                mode = FIRST
                _walk_first(reg, model, version, State.STAGING, "first version: staging")
            else:
                mode = ROLLOUT
                reg.start_rollout(model, version, schedule=spec.canary.schedule, actor=ACTOR,
                                  reason="pipeline: validated")
            state = reg.get_version(model, version).state
        finally:
            reg.close()
        staged: dict[str, Any] = {
            "model": model, "version": version, "mode": mode, "production": production
        }
        return Output(staged, metadata={**_flat(staged), "state": state.value})

    @asset(name=f"{p}_staging_tests", group_name=p,
           ins={"staged": AssetIn(f"{p}_staging_deployment")}, compute_kind="roost")
    def staging_tests(
        context: AssetExecutionContext, registry: RegistryResource, staged: dict[str, Any]
    ) -> Output[dict[str, Any]]:
        """Recent production requests replayed against the candidate on a staging gateway."""
        version = int(staged["version"])
        if staged["mode"] == NOOP:
            evidence: dict[str, Any] = {"version": version, "passed": True, "skipped": True,
                                        "reason": "already the production version"}
            return Output({**staged, "evidence": evidence}, metadata=_flat(evidence))
        reg = registry.get_registry()
        try:
            report = run_staging_tests(spec, version, reg, registry.settings())
            evidence = report.evidence()
            context.log.info(f"staging tests of {model} v{version}: {report.reason}")
            if staged["mode"] == ROLLOUT and report.passed:
                reg.staging_passed(model, version, evidence=evidence, actor=ACTOR)
            elif staged["mode"] == ROLLOUT:
                reg.staging_failed(model, version, reason=f"staging tests: {report.reason}",
                                   evidence=evidence, actor=ACTOR)
            elif report.passed:
                _walk_first(reg, model, version, State.STAGING_TESTED,
                            f"staging tests passed: {report.reason}")
            reg.update_metrics(model, version, {
                f"staging.{k}": v for k, v in evidence.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            })
        finally:
            reg.close()
        return Output({**staged, "evidence": evidence}, metadata=_flat(evidence))

    @asset(name=f"{p}_canary_deployment", group_name=p,
           ins={"tested": AssetIn(f"{p}_staging_tests")}, compute_kind="roost")
    def canary_deployment(
        registry: RegistryResource, tested: dict[str, Any]
    ) -> Output[dict[str, Any]]:
        """The candidate taking the first step of its canary schedule."""
        version, mode = int(tested["version"]), tested["mode"]
        if not tested["evidence"].get("passed"):
            raise Failure(f"version {version} of {model} failed its staging tests")
        reg = registry.get_registry()
        try:
            if mode == ROLLOUT:
                status = reg.begin_canary(model, version, actor=ACTOR)
                percent, phase = status.percent, status.phase.value
            elif mode == FIRST:  # nothing to compare with: straight to 100 % and promoted
                _walk_first(reg, model, version, State.CANARY, "first version: canary at 100%")
                reg.deploy(model, version, reason="first version: promoted", actor=ACTOR)
                percent, phase = 100.0, "PROMOTED"
            else:
                percent, phase = 100.0, "PROMOTED"
        finally:
            reg.close()
        out = {"model": model, "version": version, "mode": mode, "percent": percent,
               "phase": phase}
        return Output(out, metadata=out)

    @asset(name=f"{p}_production_deployment", group_name=p, output_required=False,
           ins={"canary": AssetIn(f"{p}_canary_deployment")}, compute_kind="roost")
    def production_deployment(
        context: AssetExecutionContext, registry: RegistryResource, canary: dict[str, Any]
    ) -> Iterator[Output[None]]:
        """The version serving production traffic (recorded once it is production)."""
        version = int(canary["version"])
        reg = registry.get_registry()
        try:
            if _production(reg, model) == version:
                yield Output(None, metadata=production_metadata(reg, model))
                return
            status = reg.get_rollout(model)
        finally:
            reg.close()
        phase = status.phase.value if status else "none"
        context.log.info(
            f"{model} v{version} is a canary ({phase}); the canary sensor advances it and the "
            "registry observer records this asset when the rollout is PROMOTED"
        )

    checks = [_staging_check(p, name) for name in STAGING_CHECKS]
    return [staging_deployment, staging_tests, canary_deployment, production_deployment], checks


def _flat(evidence: dict[str, Any]) -> dict[str, Any]:
    return {k: ("none" if v is None else v) for k, v in evidence.items()}


def _staging_check(prefix: str, name: str) -> AssetChecksDefinition:
    @asset_check(asset=f"{prefix}_staging_tests", name=f"staging_{name}_check", blocking=True,
                 description=f"Staging criterion '{name}' of the candidate version.")
    def check(staging_tests: dict[str, Any]) -> AssetCheckResult:
        e = staging_tests["evidence"]
        if e.get("skipped"):
            return AssetCheckResult(passed=True, metadata=_flat(e))
        bar = {k[4:]: v for k, v in e.items() if k.startswith("bar.")}
        if name == "error_rate":
            passed = e["error_rate"] <= bar["max_error_rate"]
            keys = ["requests", "errors", "error_rate", "bar.max_error_rate", "first_error"]
        elif name == "latency":
            passed = e["p99_ms"] <= bar["latency_budget_ms"]
            keys = ["requests", "p50_ms", "p99_ms", "bar.latency_budget_ms"]
        else:
            passed = e["agreement"] is None or e["agreement"] >= bar["min_agreement"]
            keys = ["source", "compared_with_production", "agreement", "bar.min_agreement"]
        meta = {k: e[k] for k in keys}
        meta.update(version=e["version"], reason=e["reason"])
        return AssetCheckResult(passed=bool(passed and e["requests"] > 0), metadata=_flat(meta))

    return check
