"""Alert rules and receivers, declared in YAML and validated with pydantic.

The file is ``$ROOST_ALERT_RULES`` when set, else ``$ROOST_HOME/alerts.yaml`` when it exists,
else the defaults shipped beside this module (``default_alerts.yaml``). A bad file raises
:class:`AlertConfigError` naming the file, the rule (by index and name) and the field.

Durations are seconds or strings such as ``30s``, ``5m``, ``1h``, ``6h``, ``1d``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_RULES_FILE = Path(__file__).with_name("default_alerts.yaml")
HOME_RULES_FILE = "alerts.yaml"
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class AlertConfigError(ValueError):
    """The alert configuration is invalid; the message names the file, rule and field."""


def parse_duration(value: object) -> float:
    """Seconds of ``value``: a number of seconds or a string like ``5m``, ``1h30m``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 300, '5m' or '1h'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        parts = _DURATION.findall(text)
        if "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{value!r} is not a duration such as 300, '5m' or '1h'")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ValueError("expected a duration such as 300, '5m' or '1h'")
    if seconds < 0:
        raise ValueError("a duration must not be negative")
    return seconds


Duration = Annotated[float, Field(ge=0)]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    """The alert's ``alertname`` label (letters, digits, ``_``; unique in the file)."""
    severity: str = "warning"
    """The ``severity`` label, used to route to receivers (``page``, ``ticket``, ``warning``...)."""
    models: list[str] | None = None
    """Only these models; ``None``: every model in the prediction log (and the registry)."""
    for_s: Duration = Field(default=0.0, alias="for")
    """How long the condition must hold before the alert fires (Prometheus' ``for``)."""
    description: str = ""
    """Extra text appended to the generated description (a runbook link, say)."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not an alert name: letters, digits and '_' only")
        return value

    @field_validator("for_s", "window_s", "long_window_s", "short_window_s", "max_age_s",
                     mode="before", check_fields=False)
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)


class LatencyRule(_Rule):
    """The ``quantile`` of a model's successful requests' latency over ``window`` exceeds
    ``threshold_ms``."""

    kind: Literal["latency"]
    quantile: float = Field(default=0.99, gt=0, lt=1)
    window_s: Duration = Field(default=300.0, alias="window", gt=0)
    threshold_ms: float = Field(gt=0)
    min_requests: int = Field(default=1, ge=1)


class ErrorRateRule(_Rule):
    """The share of 5xx answers of a model over ``window`` exceeds ``threshold`` (0-1)."""

    kind: Literal["error_rate"]
    window_s: Duration = Field(default=300.0, alias="window", gt=0)
    threshold: float = Field(gt=0, lt=1)
    min_requests: int = Field(default=1, ge=1)


class DriftRule(_Rule):
    """The latest drift report's share of drifted features exceeds ``threshold`` (0-1).

    No drift report younger than ``max_age`` is "no data", never firing."""

    kind: Literal["drift"]
    threshold: float = Field(default=0.5, ge=0, lt=1)
    max_age_s: Duration = Field(default=2 * 86400.0, alias="max_age", gt=0)


class AccuracyRule(_Rule):
    """Labelled accuracy (predictions joined with feedback on ``request_id``) over ``window``
    is below ``threshold``, once at least ``min_labelled`` requests are labelled."""

    kind: Literal["accuracy"]
    window_s: Duration = Field(default=86400.0, alias="window", gt=0)
    threshold: float = Field(gt=0, le=1)
    min_labelled: int = Field(default=50, ge=1)
    label_output: str = "label"


class FreshnessRule(_Rule):
    """Model freshness, "time from artifact to production" (REQUIREMENTS.md, < 1 h): a version
    registered after the production version, still on its way (REGISTERED ... CANARY), has
    waited longer than ``max_age`` since its artifact was registered."""

    kind: Literal["freshness"]
    max_age_s: Duration = Field(default=3600.0, alias="max_age", gt=0)


class FairnessRule(_Rule):
    """The latest fairness results (the ``fairness`` view, written by each model's
    ``<p>_fairness`` asset, assets/fairness.py) violate a bar: a disparate-impact ratio below
    ``min_di_ratio`` (0.8: the EEOC four-fifths rule), or a demographic-parity / equalized-odds
    difference above ``max_dp_difference`` / ``max_eo_difference``. Only attributes with a
    verdict (two groups with enough rows) count; no results younger than ``max_age``: no data."""

    kind: Literal["fairness"]
    min_di_ratio: float | None = Field(default=0.8, gt=0, le=1)
    max_dp_difference: float | None = Field(default=None, ge=0, le=1)
    max_eo_difference: float | None = Field(default=None, ge=0, le=1)
    attributes: list[str] | None = None
    """Only these protected attributes; ``None``: every attribute in the results."""
    max_age_s: Duration = Field(default=2 * 86400.0, alias="max_age", gt=0)


class BurnRateRule(_Rule):
    """Error-budget burn rate of an availability SLO above ``factor`` over BOTH windows.

    burn rate = (5xx share over the window) / (1 - ``slo``)."""

    kind: Literal["burn_rate"]
    slo: float = Field(default=0.9999, gt=0, lt=1)
    long_window_s: Duration = Field(alias="long_window", gt=0)
    short_window_s: Duration = Field(alias="short_window", gt=0)
    factor: float = Field(gt=0)
    per_model: bool = False
    """One alert per model instead of one for the whole platform."""
    min_requests: int = Field(default=1, ge=1)


Rule = Annotated[
    LatencyRule | ErrorRateRule | DriftRule | AccuracyRule | FreshnessRule | BurnRateRule
    | FairnessRule,
    Field(discriminator="kind"),
]


class Receiver(BaseModel):
    """A webhook that takes Alertmanager's webhook JSON (version 4)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    severities: list[str] | None = None
    """Only alerts with one of these ``severity`` labels; ``None``: every alert."""
    send_resolved: bool = True
    timeout_s: float = Field(default=5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value

    def wants(self, severity: str) -> bool:
        return self.severities is None or severity in self.severities


class RetryPolicy(BaseModel):
    """Attempts within one tick, exponential backoff between them (``backoff * 2**k``, capped)."""

    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(default=3, ge=1, le=10)
    backoff_s: float = Field(default=0.5, ge=0)
    max_backoff_s: float = Field(default=30.0, ge=0)
    outbox_ttl_s: Duration = Field(default=86400.0, alias="outbox_ttl", gt=0)
    """A message still undelivered after this long is dropped from the outbox (logged)."""

    @field_validator("outbox_ttl_s", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        return float(min(self.backoff_s * 2**attempt, self.max_backoff_s))


class AlertConfig(BaseModel):
    """Everything the alert sensor needs: rules, receivers, repeat interval, retries."""

    model_config = ConfigDict(extra="forbid")

    rules: list[Rule] = Field(default_factory=list)
    receivers: list[Receiver] = Field(default_factory=list)
    repeat_interval_s: Duration = Field(default=4 * 3600.0, alias="repeat_interval", gt=0)
    """A still-firing alert is sent again after this long."""
    external_url: str = ""
    """``externalURL`` of the webhook messages (the Dagster UI, say)."""
    retry: RetryPolicy = Field(default_factory=RetryPolicy)

    @field_validator("repeat_interval_s", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[_Rule]) -> list[_Rule]:
        seen: set[str] = set()
        for rule in rules:
            if rule.name in seen:
                raise ValueError(f"two rules are named {rule.name!r}")
            seen.add(rule.name)
        return rules


def _where(loc: tuple[int | str, ...], raw: Any) -> str:
    """``rules[2] (HighLatency).threshold_ms`` for a pydantic error location."""
    parts: list[str] = []
    items = list(loc)
    kinds = {"latency", "error_rate", "drift", "accuracy", "freshness", "burn_rate", "fairness"}
    if len(items) >= 2 and items[0] in ("rules", "receivers") and isinstance(items[1], int):
        section, index = str(items[0]), items[1]
        entries = raw.get(section) if isinstance(raw, dict) else None
        entry = entries[index] if isinstance(entries, list) and index < len(entries) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        parts.append(f"{section}[{index}]" + (f" ({name})" if name else ""))
        items = items[2:]
        if section == "rules" and items and items[0] in kinds:
            items = items[1:]  # the discriminator's tag
    for item in items:
        parts.append(f"[{item}]" if isinstance(item, int) else f".{item}")
    return "".join(parts).lstrip(".") or "(top level)"


def parse_config(raw: Any, source: str = "<alerts>") -> AlertConfig:
    """Validate ``raw`` (the YAML's data); errors name ``source``, the rule and the field."""
    if raw is None:
        raw = {}
    try:
        return AlertConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{source}: {_where(tuple(e['loc']), raw)}: {e['msg']}" for e in exc.errors()]
        raise AlertConfigError("\n".join(lines)) from None


def rules_path(home: Path, explicit: Path | None = None) -> Path:
    """Which file holds the rules: ``explicit``, ``<home>/alerts.yaml``, or the defaults."""
    if explicit is not None:
        return explicit
    candidate = Path(home) / HOME_RULES_FILE
    return candidate if candidate.is_file() else DEFAULT_RULES_FILE


def load_config(path: Path) -> AlertConfig:
    """Read and validate one alert configuration file."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise AlertConfigError(f"{path}: cannot read the alert rules: {exc}") from None
    except yaml.YAMLError as exc:
        raise AlertConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, str(path))
