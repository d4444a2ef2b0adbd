"""Quantize a registered version into a new version (lineage to its source), and its Dagster job.

:func:`quantize_registered` loads the source version's ONNX bytes (sha256-checked) and the
model spec's held-out rows, splits those rows into a calibration sample (static mode only; at
most :data:`CALIBRATION_ROWS`, drawn with a fixed seed) and the evaluation rows (the rest), runs
:func:`registry.quantize.quantize`, measures the result against the source on the evaluation
rows (:func:`registry.quantize.compare`), and registers it as the model's next version:

* ``lineage``: ``{"quantized_from": {"model", "version", "sha256"}, "mode": ...,
  "calibration_rows": ...}``;
* ``metrics``: ``quantization.*`` (accuracy delta, latency ratios, size ratio, ...);
* the source's feature names, tags and serving config;
* an explanation background sample (:func:`registry.explain.attach_background`).

The new version is REGISTERED like any other: ``roost validate MODEL VERSION`` validates it,
then it is canaried / promoted like any version. The ``quantize_model`` job does the same
with run config ``{"ops": {"quantize_version": {"config": {"model", "version", "mode"}}}}``.
"""

# Dagster reads the op's annotations at definition time: no `from __future__ import annotations`.
from typing import Any

import numpy as np
from dagster import Config, OpExecutionContext, job, op

from assets.demo_data import Dataset
from assets.held_out import load_held_out
from assets.resources import RegistryResource
from assets.spec import ModelSpec, SpecError, all_specs
from registry import Conflict, InvalidRequest, NotFound, Registry, VersionInfo
from registry.explain import attach_background
from registry.quantize import check_mode, compare, quantize

CALIBRATION_ROWS = 200
MIN_EVAL_ROWS = 50
METRIC_PREFIX = "quantization."


def spec_for(home: Any, model: str) -> ModelSpec:
    """The model's spec (demo specs and ``$ROOST_HOME/models/*.yaml``); NotFound if none."""
    try:
        specs = {s.name: s for s in all_specs(home)}
    except SpecError as exc:
        raise InvalidRequest(str(exc)) from None
    if model not in specs:
        raise NotFound(
            f"no spec for model {model!r}: quantizing needs its held-out data; write one with "
            f"`roost model add {model} --held-out FILE --label COLUMN`"
        )
    return specs[model]


def split_rows(n: int, calibration: int = CALIBRATION_ROWS, seed: int = 0) -> tuple[
    np.ndarray, np.ndarray
]:
    """(calibration row indices, evaluation row indices): disjoint unless too few rows."""
    order = np.random.default_rng(seed).permutation(n)
    take = min(calibration, n // 3)
    if n - take < MIN_EVAL_ROWS:
        return order[: min(calibration, n)], order
    return order[:take], order[take:]


def quantize_registered(
    reg: Registry, model: str, version: int, mode: str, data: Dataset, *, runs: int = 200
) -> VersionInfo:
    """Quantize ``model`` ``version`` into a new REGISTERED version; see the module docstring."""
    try:
        checked = check_mode(mode)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    source = reg.get_version(model, version)
    src_bytes = reg.load_artifact(model, version)
    if source.lineage.get("quantized_from"):
        raise InvalidRequest(
            f"version: {model} version {version} is already quantized "
            f"(from version {source.lineage['quantized_from'].get('version')}); quantize its "
            "source instead"
        )
    X = data.X.astype(np.float32)
    y = np.asarray(data.y)
    width = source.signature.inputs[0].shape[-1] if source.signature.inputs else -1
    if len(source.signature.inputs) != 1 or width not in (-1, X.shape[1]):
        raise InvalidRequest(
            f"version: {model} version {version} does not take one [N, {X.shape[1]}] input "
            "like its held-out data"
        )
    cal_idx, eval_idx = split_rows(len(X))
    calibration = X[cal_idx] if checked == "static" else None
    try:
        candidate = quantize(src_bytes, checked, calibration)
    except ValueError as exc:
        raise InvalidRequest(f"mode: {exc}") from None
    figures = compare(src_bytes, candidate, X[eval_idx], y[eval_idx], runs=runs)
    metrics: dict[str, Any] = {f"{METRIC_PREFIX}{k}": v for k, v in figures.items()}
    metrics[f"{METRIC_PREFIX}calibration_rows"] = len(cal_idx) if calibration is not None else 0
    result = reg.register(
        model,
        candidate,
        feature_names=list(source.signature.feature_names or []) or None,
        metrics=metrics,
        lineage={
            "quantized_from": {"model": model, "version": version, "sha256": source.sha256},
            "mode": checked,
            "calibration_rows": len(cal_idx) if calibration is not None else 0,
            "held_out": data.name,
        },
        tags=dict(source.tags),
        config=dict(source.config),
        description=f"{checked} quantization of version {version}",
    )
    if not result.created:
        raise Conflict(
            f"{model} version {result.version.version} already holds these quantized bytes "
            f"(state {result.version.state.value}); nothing registered"
        )
    attach_background(reg, model, result.version.version, X[cal_idx])
    return reg.get_version(model, result.version.version)


class QuantizeConfig(Config):
    """Which version to quantize, and how (``dynamic``, ``static`` or ``fp16``)."""

    model: str
    version: int
    mode: str = "dynamic"


@op(name="quantize_version")
def quantize_version_op(
    context: OpExecutionContext, config: QuantizeConfig, registry: RegistryResource
) -> dict[str, Any]:
    """Quantize one registered version into a new version (see :mod:`assets.quantize`)."""
    reg = registry.get_registry()
    try:
        spec = spec_for(registry.settings().home, config.model)
        data = load_held_out(spec.held_out, spec.name)
        info = quantize_registered(reg, config.model, config.version, config.mode, data)
    finally:
        reg.close()
    figures = {k: v for k, v in info.metrics.items() if k.startswith(METRIC_PREFIX)}
    context.log.info(f"registered {info.model} version {info.version}: {figures}")
    return {"model": info.model, "version": info.version, "sha256": info.sha256, **figures}


@job(name="quantize_model", description="Quantize a registered version into a new version.")
def quantize_job() -> None:
    quantize_version_op()
