"""``roost model add`` (write a model spec) and ``roost validate`` (run a model's validation).

Both work on the specs of :mod:`assets.spec`: the demo specs plus ``$ROOST_HOME/models/*.yaml``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from assets.spec import SpecError, parse_spec, write_spec
from registry import RoostError, RoostSettings


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.group("model")
def model_group() -> None:
    """Model specs: how a model's versions are validated, staged and rolled out."""


@model_group.command("add")
@click.argument("name")
@click.option("--held-out", "held_out", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV or Parquet file of labelled held-out rows.")
@click.option("--label", required=True, help="The label column of the held-out file.")
@click.option("--features", default=None, help="Comma-separated feature columns (default: all "
              "but the label).")
@click.option("--metric", type=click.Choice(["accuracy", "auc"]), default="accuracy")
@click.option("--min", "minimum", type=click.FloatRange(0, 1), default=0.9)
@click.option("--latency-ms", type=float, default=5.0, help="Offline single-row p99 budget.")
@click.option("--staging-latency-ms", type=float, default=50.0)
@click.option("--replay", type=int, default=200, help="Requests the staging tests replay.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=0.95)
@click.option("--schedule", default="1,5,10,25,50,100", help="Canary percents.")
@click.option("--force", is_flag=True, help="Replace an existing spec.")
def model_add(
    name: str, held_out: Path, label: str, features: str | None, metric: str, minimum: float,
    latency_ms: float, staging_latency_ms: float, replay: int, min_agreement: float,
    schedule: str, force: bool,
) -> None:
    """Write $ROOST_HOME/models/NAME.yaml for an ONNX model users register."""
    settings = RoostSettings()
    try:
        steps = [float(p) for p in schedule.split(",")]
    except ValueError:
        _fail(f"--schedule: expected numbers like 1,5,25,100, got {schedule!r}")
    data: dict[str, Any] = {
        "name": name,
        "source": {"kind": "onnx"},
        "held_out": {"path": str(held_out.resolve()), "label": label},
        "validation": {"metric": metric, "minimum": minimum, "latency_p99_ms": latency_ms},
        "staging": {"replay_sample": replay, "latency_budget_ms": staging_latency_ms,
                    "min_agreement": min_agreement},
        "canary": {"schedule": steps},
    }
    if features:
        data["held_out"]["features"] = [f.strip() for f in features.split(",") if f.strip()]
    try:
        spec = parse_spec(data, origin=f"model {name}")
        from assets.held_out import load_held_out

        load_held_out(spec.held_out, spec.name)  # the file has the label and numeric features
        path = write_spec(settings.home, spec, overwrite=force)
    except SpecError as exc:
        _fail(str(exc))
    click.echo(f"wrote {path}")
    click.echo(f"next: roost register MODEL.onnx --model {name}; roost validate {name}")


def _dagster_instance(settings: RoostSettings) -> Any:
    from dagster import DagsterInstance

    from orchestration.up import prepare_dagster_home

    os.environ["DAGSTER_HOME"] = str(prepare_dagster_home(settings))
    return DagsterInstance.get()


@click.command("validate")
@click.argument("model")
@click.argument("version", type=int, required=False)
def validate(model: str, version: int | None) -> None:
    """Run MODEL's validation (the newest registered version, or VERSION); print each check."""
    from dagster import materialize

    from assets.lineage import build_lineage
    from assets.resources import FeatureStoreResource, RegistryResource
    from assets.spec import all_specs

    settings = RoostSettings()
    try:
        specs = {s.name: s for s in all_specs(settings.home)}
    except SpecError as exc:
        _fail(str(exc))
    if model not in specs:
        _fail(f"no spec for model {model!r}; write one with `roost model add {model} ...`")
    spec = specs[model]
    lineage = build_lineage(spec)
    run_config: dict[str, Any] = {}
    if version is not None:
        if not spec.is_onnx:
            _fail(f"{model} is trained by the pipeline; VERSION is for registered ONNX models")
        run_config = {"ops": {f"{spec.prefix}_candidate": {"config": {"version": version}}}}
    try:
        with _dagster_instance(settings) as instance:
            result = materialize(
                [*lineage.assets, *lineage.checks], selection=lineage.validate_selection(),
                instance=instance, run_config=run_config, raise_on_error=False,
                resources={"registry": RegistryResource(home=str(settings.home)),
                           "features": FeatureStoreResource(home=str(settings.home))},
            )
    except RoostError as exc:
        _fail(exc.message)
    for event in result.get_asset_check_evaluations():
        mark = "PASS" if event.passed else "FAIL"
        click.echo(f"{mark}  {event.check_name}")
        for key, value in event.metadata.items():
            click.echo(f"      {key}: {value.value}")
    outputs = [
        e for e in result.get_asset_materialization_events()
        if e.asset_key is not None and e.asset_key.to_user_string() == f"{spec.prefix}_validation"
    ]
    if not outputs:
        failures = [e.message for e in result.all_events if e.is_failure and e.message]
        _fail("validation did not run: " + ("; ".join(failures[-1:]) or "see the Dagster run"))
    meta = outputs[0].materialization.metadata
    click.echo(f"{model} version {meta['version'].value}: {meta['state'].value} "
               f"(run {result.run_id})")
    if meta["state"].value != "VALIDATED":
        sys.exit(1)


def add_model_commands(main: click.Group) -> None:
    """Register ``roost model ...`` and ``roost validate`` on the ``roost`` group."""
    main.add_command(model_group)
    main.add_command(validate)
