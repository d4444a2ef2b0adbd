"""The demo language model ``roost-lm``: trained, registered, validated and deployed like any model.

Assets (group ``roost_lm``)::

    roost_lm_trained_model -> roost_lm_onnx_artifact -> roost_lm_validation -> roost_lm_deployment

Training is cached in ``$ROOST_HOME/llm/`` (:mod:`llm.cache`): the first run trains for about
two minutes, later runs reuse the file while the docs, the configuration and the seed are the
same. The version is registered with ``backend: llm`` in its serving config and the tag
``task: text-generation``; its validation (:mod:`assets.llm_checks`) blocks a version whose
held-out perplexity is above :attr:`LlmSpec.max_perplexity`. A validated version is deployed
straight to production (``Registry.deploy``).
"""

# Dagster reads these annotations at definition time: no `from __future__ import annotations`.
import platform
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetChecksDefinition,
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    Config,
    Failure,
    Output,
    asset,
)

from assets.llm_checks import (
    LLM_CHECKS,
    check_decode_latency,
    check_llm_contract,
    check_perplexity,
)
from assets.resources import RegistryResource
from assets.validation import ValidationReport
from assets.validation_assets import _make_check, record_validation
from registry import Registry

TASK = "text-generation"
SERVING_CONFIG = {"backend": "llm"}


@dataclass(frozen=True)
class LlmSpec:
    """A text-generation model the pipeline trains, and the bar its versions must clear."""

    name: str = "roost-lm"
    prefix: str = "roost_lm"
    config: str = "demo"  # llm/configs.yaml
    seed: int = 0
    max_perplexity: float = 300.0
    """Held-out perplexity bar, half the unigram baseline (~600); random weights score ~2000."""
    decode_latency_ms: float = 20.0  # one cached decode step, p99: 50 tokens/s per stream
    description: str = "The project's own small language model, trained on its docs."


LLM_DEMO = LlmSpec()


class LlmTrainingConfig(Config):
    """Knobs of the training run (the cache key includes them)."""

    config: str = LLM_DEMO.config
    seed: int = LLM_DEMO.seed
    minutes: float | None = None


def llm_validation_report(onnx_bytes: bytes, spec: LlmSpec) -> ValidationReport:
    """Every criterion of a text-generation version, on the corpus's held-out documents."""
    from llm.corpus import load_corpus

    return ValidationReport([
        check_llm_contract(onnx_bytes),
        check_perplexity(onnx_bytes, load_corpus().held_out_texts(), spec.max_perplexity),
        check_decode_latency(onnx_bytes, spec.decode_latency_ms),
    ])


def register_llm(reg: Registry, spec: LlmSpec, onnx_bytes: bytes, *, summary: dict[str, Any],
                 lineage: dict[str, Any], tags: dict[str, Any],
                 registered_by: str) -> dict[str, Any]:
    """Register ``onnx_bytes`` as a text-generation version of ``spec.name``."""
    metrics = {f"train.{k}": v for k, v in summary.items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    info = reg.register_version(
        spec.name, onnx_bytes, metrics=metrics, lineage=lineage,
        tags={"task": TASK, **tags}, config=dict(SERVING_CONFIG),
        registered_by=registered_by, description=spec.description,
    )
    return {"model": info.model, "version": info.version, "sha256": info.sha256,
            "state": info.state.value}


def llm_assets(spec: LlmSpec = LLM_DEMO) -> tuple[list[AssetsDefinition],
                                                  list[AssetChecksDefinition]]:
    """The four assets of a pipeline-trained language model and its validation checks."""
    p = spec.prefix

    @asset(name=f"{p}_trained_model", group_name=p, compute_kind="jax")
    def trained_model(context: AssetExecutionContext, config: LlmTrainingConfig,
                      registry: RegistryResource) -> Output[dict[str, Any]]:
        """The transformer trained on the project's docs (cached under $ROOST_HOME/llm)."""
        from llm.cache import trained_model as cached

        model = cached(registry.settings().home, config.config, config.seed, config.minutes,
                       log=context.log.info, good_enough=lambda summary: float(
                           summary.get("held_out_perplexity", "inf")) <= spec.max_perplexity)
        out = {"path": str(model.path), "summary": model.summary, "config": config.config,
               "seed": config.seed, "trained_now": model.trained_now}
        return Output(out, metadata={**_scalars(model.summary), "path": str(model.path),
                                     "trained_now": model.trained_now})

    @asset(name=f"{p}_onnx_artifact", group_name=p, compute_kind="onnx",
           ins={"trained": AssetIn(f"{p}_trained_model")})
    def onnx_artifact(context: AssetExecutionContext, registry: RegistryResource,
                      trained: dict[str, Any]) -> Output[dict[str, Any]]:
        """The ONNX export (KV cache, tokenizer inside) registered as a new version."""
        from pathlib import Path

        summary = trained["summary"]
        lineage = {
            "training_data": "repo docs and docstrings (llm/corpus.py)",
            "training_data_fingerprint": summary.get("corpus_sha256"),
            "parameters": {"config": trained["config"], "seed": trained["seed"],
                           "steps": summary.get("steps")},
            "python": platform.python_version(), "dagster_run_id": context.run.run_id,
        }
        reg = registry.get_registry()
        try:
            out = register_llm(reg, spec, Path(trained["path"]).read_bytes(), summary=summary,
                               lineage=lineage, registered_by="dagster",
                               tags={"pipeline": "demo",
                                     "asset": context.asset_key.to_user_string()})
        finally:
            reg.close()
        return Output(out, metadata=out)

    @asset(name=f"{p}_validation", group_name=p, compute_kind="onnxruntime",
           ins={"artifact": AssetIn(f"{p}_onnx_artifact")})
    def validation(registry: RegistryResource,
                   artifact: dict[str, Any]) -> Output[dict[str, Any]]:
        """The version judged on held-out text (perplexity bar); it ends VALIDATED or FAILED."""
        reg = registry.get_registry()
        try:
            onnx_bytes = reg.load_artifact(artifact["model"], int(artifact["version"]))
            report = llm_validation_report(onnx_bytes, spec)
            state = record_validation(reg, artifact, report)
        finally:
            reg.close()
        result = {
            "model": artifact["model"], "version": artifact["version"],
            "passed": report.passed, "state": state.value,
            "outcomes": {o.name: {"passed": o.passed, "description": o.description,
                                  "metadata": o.metadata} for o in report.outcomes},
        }
        return Output(result, metadata={"version": artifact["version"], "state": state.value,
                                        "passed": report.passed,
                                        "failed_checks": ", ".join(report.failed) or "none"})

    @asset(name=f"{p}_deployment", group_name=p, compute_kind="roost",
           ins={"validated": AssetIn(f"{p}_validation")})
    def deployment(registry: RegistryResource,
                   validated: dict[str, Any]) -> Output[dict[str, Any]]:
        """The validated version serving production (``backend: llm``)."""
        version = int(validated["version"])
        if not validated["passed"]:
            raise Failure(f"version {version} of {spec.name} failed validation; not deploying")
        reg = registry.get_registry()
        try:
            info = reg.deploy(spec.name, version, reason="pipeline: validated", actor="dagster")
        finally:
            reg.close()
        out = {"model": spec.name, "production_version": info.production_version,
               "generate_url": f"/v2/models/{spec.name}/generate"}
        return Output(out, metadata=out)

    checks = [_make_check(p, name) for name in LLM_CHECKS]
    return [trained_model, onnx_artifact, validation, deployment], checks


def _scalars(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if isinstance(v, int | float | str)}
