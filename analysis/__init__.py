"""Statistics of safe promotion: canary analysis and A/B experiment analysis.

* :mod:`analysis.samples` reads per-arm samples (requests, errors, latencies, feedback) of a
  model in a time window from the prediction and feedback logs (DuckDB over Parquet).
* :mod:`analysis.canary` compares a canary with production at one of a planned number of looks
  (alpha spending) and decides ``rollback`` / ``hold`` / ``advance``.
* :mod:`analysis.experiments` summarises an A/B experiment per variant (confidence intervals,
  p-values against the control, sample-ratio mismatch, sample size still needed) and writes the
  results where the DuckDB view ``experiment_results`` reads them.

Pure library: it reads logs and returns values; it never changes a traffic policy. Only the
orchestration layer (assets, sensors) imports it.
"""

from analysis.canary import CanaryAnalysis, CanaryConfig, MetricResult, alpha_spent, compare
from analysis.experiments import (
    ExperimentConfig,
    ExperimentResult,
    VariantResult,
    analyse_experiment,
    read_experiment,
    write_experiment_results,
)
from analysis.samples import ArmSample, read_arms, read_canary

__all__ = [
    "ArmSample",
    "CanaryAnalysis",
    "CanaryConfig",
    "ExperimentConfig",
    "ExperimentResult",
    "MetricResult",
    "VariantResult",
    "alpha_spent",
    "analyse_experiment",
    "compare",
    "read_arms",
    "read_canary",
    "read_experiment",
    "write_experiment_results",
]
