"""A model spec: everything the pipeline needs to validate, stage, canary and promote a model.

Specs are YAML files in ``$ROOST_HOME/models/<name>.yaml`` (``roost model add`` writes one) plus
the two built-in demo specs. One spec generates one lineage of Dagster assets (see
:mod:`assets.lineage`)::

    name: churn
    source:
      kind: onnx              # a file the user registers with `roost register`; or `trainer`
    held_out:
      path: /data/churn_holdout.csv   # CSV or Parquet
      label: churned
      features: [tenure, spend, calls]  # optional: every column but the label
    validation:
      metric: auc             # accuracy | auc
      minimum: 0.85
      latency_p99_ms: 5.0
      parity_tolerance: 0.0001   # used only where a native model exists (demo trainers)
    staging:
      replay_sample: 200
      latency_budget_ms: 50.0
      max_error_rate: 0.01
      min_agreement: 0.95
    canary:
      schedule: [1, 5, 10, 25, 50, 100]
      step_interval_s: 300
      alpha: 0.05
      min_requests: 200
      p99_ratio_budget: 1.2   # canary p99 may be this multiple of production's ...
      p99_floor_ms: 5.0       # ... and this many ms above it (noise at small latencies)
    fairness:                 # optional: a blocking check and a monitored asset (issue 14)
      attributes: [age_band]  # held-out columns / `roost-attr-<name>` request headers
      favorable_label: 0      # the outcome applicants want (0: "not fraud")
      min_di_ratio: 0.8       # four-fifths rule on the favorable-outcome rates
      max_dp_difference: 0.1
      max_eo_difference: 0.2
    residency:                # optional: gateways of other regions refuse this model (451)
      allowed_regions: [eu]

An invalid file raises :class:`SpecError` naming the file and the offending field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from registry.service import check_model_name

DemoTrainer = Literal["breast-cancer", "fraud"]
SPECS_DIR = "models"


class SpecError(ValueError):
    """A model spec that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CandidateSource(_Strict):
    """Where candidate versions come from: a demo trainer, or ONNX files users register."""

    kind: Literal["trainer", "onnx"] = "onnx"
    trainer: DemoTrainer | None = None

    @model_validator(mode="after")
    def _trainer_matches_kind(self) -> CandidateSource:
        if self.kind == "trainer" and self.trainer is None:
            raise ValueError("kind 'trainer' needs trainer: breast-cancer or fraud")
        if self.kind == "onnx" and self.trainer is not None:
            raise ValueError("trainer is only for kind 'trainer'")
        return self


class HeldOutData(_Strict):
    """Labelled rows the candidate is judged on: a CSV/Parquet file, or the demo generator."""

    path: str | None = None
    label: str = "label"
    features: list[str] | None = None
    demo: DemoTrainer | None = None

    @model_validator(mode="after")
    def _one_source(self) -> HeldOutData:
        if (self.path is None) == (self.demo is None):
            raise ValueError("give exactly one of path (a CSV or Parquet file) or demo")
        if self.path is not None and Path(self.path).suffix.lower() not in (
            ".csv",
            ".parquet",
            ".pq",
        ):
            raise ValueError(f"path {self.path!r}: expected a .csv or .parquet file")
        return self


class ValidationThresholds(_Strict):
    """The bar a candidate must clear offline."""

    metric: Literal["accuracy", "auc"] = "accuracy"
    minimum: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9
    min_auc: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    """A second bar on ROC AUC when ``metric`` is accuracy (imbalanced data)."""
    latency_p99_ms: Annotated[float, Field(gt=0)] = 5.0
    parity_tolerance: Annotated[float, Field(gt=0)] = 1e-4


class StagingSettings(_Strict):
    """What the staging tests replay and the bar they must clear."""

    replay_sample: Annotated[int, Field(ge=1, le=100_000)] = 200
    latency_budget_ms: Annotated[float, Field(gt=0)] = 50.0
    max_error_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    min_agreement: Annotated[float, Field(ge=0.0, le=1.0)] = 0.95
    gateway: Literal["subprocess", "in_process"] = "subprocess"
    """``subprocess`` runs ``roost serve`` with ``ROOST_SCOPE=staging`` (realistic); ``in_process``
    runs the app under uvicorn in a thread (faster; used by the demos)."""


class CanarySettings(_Strict):
    """How the canary sensor walks traffic to the candidate."""

    schedule: list[float] = Field(default_factory=lambda: [1.0, 5.0, 10.0, 25.0, 50.0, 100.0])
    step_interval_s: Annotated[float, Field(gt=0)] = 300.0
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    min_requests: Annotated[int, Field(ge=1)] = 200
    p99_ratio_budget: Annotated[float, Field(ge=1.0)] = 1.2
    """The canary's p99 latency may be up to this multiple of production's ..."""
    p99_floor_ms: Annotated[float, Field(ge=0.0)] = 5.0
    """... and up to this many ms above it whatever the ratio (noise at small latencies)."""
    min_labelled: Annotated[int, Field(ge=1)] = 100
    """Labelled answers per arm before accuracy is tested (feedback from /v1/feedback)."""
    require_labels: bool = False
    """Hold each step until both arms have ``min_labelled`` labels: a canary that answers
    wrongly without erroring then cannot advance before its accuracy was tested."""

    @field_validator("schedule")
    @classmethod
    def _increasing_to_100(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("schedule must not be empty")
        if any(not 0 < p <= 100 for p in value):
            raise ValueError("every step must be in (0, 100]")
        if any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError("steps must increase")
        if value[-1] != 100:
            raise ValueError("the last step must be 100")
        return value


_ATTRIBUTE = re.compile(r"[a-z][a-z0-9_]{0,31}")


class FairnessSettings(_Strict):
    """Fairness bars per protected attribute (:mod:`monitoring.fairness`): checked on held-out
    data before promotion (a blocking check) and on logged predictions with feedback."""

    attributes: list[str] = Field(min_length=1)
    """Protected attributes: held-out columns, and ``roost-attr-<name>`` headers when served."""
    favorable_label: Literal[0, 1] = 1
    min_di_ratio: Annotated[float | None, Field(gt=0.0, le=1.0)] = 0.8
    """Disparate-impact ratio (lowest / highest favorable-outcome rate); EEOC four-fifths."""
    max_dp_difference: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    """Largest allowed gap in favorable-outcome rates between groups."""
    max_eo_difference: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    """Largest allowed equalized-odds difference (max of the TPR and FPR gaps)."""
    min_group_size: Annotated[int, Field(ge=1)] = 30
    """Groups with fewer rows are reported but not judged (too noisy)."""

    @field_validator("attributes")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _ATTRIBUTE.fullmatch(name):
                raise ValueError(f"{name!r}: lower-case letters, digits and '_', at most 32")
        if len(set(value)) != len(value):
            raise ValueError("attributes must be unique")
        return value


class ResidencySettings(_Strict):
    """Regions (``ROOST_REGION`` values) whose gateways may serve the model and hold its logs."""

    allowed_regions: list[str] = Field(min_length=1)


class ModelSpec(_Strict):
    """One served model and the path its versions take to production."""

    name: str
    description: str = ""
    source: CandidateSource = CandidateSource()
    held_out: HeldOutData
    validation: ValidationThresholds = ValidationThresholds()
    staging: StagingSettings = StagingSettings()
    canary: CanarySettings = CanarySettings()
    feature_service: str | None = None
    """A Feast FeatureService the model's training data comes from (the fraud demo)."""
    fairness: FairnessSettings | None = None
    residency: ResidencySettings | None = None

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        try:
            return check_model_name(value)
        except Exception as exc:  # InvalidRequest -> a pydantic field error
            raise ValueError(getattr(exc, "message", str(exc))) from None

    @property
    def prefix(self) -> str:
        """Asset key prefix, group and job name stem: the name as a Python identifier."""
        stem = re.sub(r"[^A-Za-z0-9_]", "_", self.name)
        return stem if stem[0].isalpha() else f"m_{stem}"

    @property
    def is_onnx(self) -> bool:
        return self.source.kind == "onnx"

    def to_yaml(self) -> str:
        text: str = yaml.safe_dump(
            self.model_dump(mode="json", exclude_none=True), sort_keys=False
        )
        return text


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def parse_spec(data: Any, *, origin: str = "<spec>") -> ModelSpec:
    """A :class:`ModelSpec` from parsed YAML/JSON data, or a :class:`SpecError` naming ``origin``
    and the fields that are wrong."""
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{origin}: {_describe(exc)}") from None


def load_spec_file(path: Path) -> ModelSpec:
    """The spec in one YAML file (its name must match the file's stem)."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc}") from None
    spec = parse_spec(data, origin=str(path))
    if spec.name != path.stem:
        raise SpecError(f"{path}: name: {spec.name!r} does not match the file name {path.stem!r}")
    return spec


def specs_dir(home: Path) -> Path:
    return home / SPECS_DIR


def load_user_specs(home: Path) -> list[ModelSpec]:
    """Every ``$ROOST_HOME/models/*.yaml`` spec, sorted by name."""
    directory = specs_dir(home)
    if not directory.is_dir():
        return []
    return [load_spec_file(p) for p in sorted(directory.glob("*.yaml"))]


def demo_specs() -> list[ModelSpec]:
    """The two built-in demo models (trained by the pipeline from the demo generators)."""
    from assets.demo import DEMO_SPECS

    return list(DEMO_SPECS)


def all_specs(home: Path) -> list[ModelSpec]:
    """The demo specs plus the user's; a user spec may not reuse a demo's name or prefix."""
    return merge_specs(demo_specs(), load_user_specs(home))


def merge_specs(*groups: Iterable[ModelSpec]) -> list[ModelSpec]:
    seen: dict[str, str] = {}
    out: list[ModelSpec] = []
    for group in groups:
        for spec in group:
            for key in (spec.name, spec.prefix):
                if key in seen:
                    raise SpecError(
                        f"model spec {spec.name!r}: {key!r} is already used by {seen[key]!r}"
                    )
            seen[spec.name] = seen[spec.prefix] = spec.name
            out.append(spec)
    return out


def write_spec(home: Path, spec: ModelSpec, *, overwrite: bool = False) -> Path:
    """Write ``spec`` to ``$ROOST_HOME/models/<name>.yaml``."""
    directory = specs_dir(home)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{spec.name}.yaml"
    if path.exists() and not overwrite:
        raise SpecError(f"{path}: already exists (use --force to replace it)")
    path.write_text(spec.to_yaml())
    return path
