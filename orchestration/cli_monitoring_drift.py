"""``roost drift MODEL``: the scheduled data drift analysis, run from the command line.

The same :func:`monitoring.drift.run_drift` the ``<prefix>_data_drift`` Dagster asset runs, for
each UTC day with logged inputs from ``--since`` (default: only the newest logged day): it writes
the Evidently HTML report and the ``drift_scores`` rows as the asset does, and prints the
per-feature table (``--json``: one object per day). Exit 1 with one ``error:`` line when the
model has no spec or no logged day.
"""

from __future__ import annotations

import importlib
import json
import sys
from datetime import date, datetime
from typing import Any

import click

from registry import NotFound, RoostError

_COLUMNS = ["feature", "test", "score", "threshold", "drifted"]


def _cli() -> Any:
    return importlib.import_module("orchestration.cli")


def _analyse(model: str, since: date | None, max_rows: int) -> list[dict[str, Any]]:
    from assets.spec import all_specs
    from monitoring.drift import NoData, feature_names_for, run_drift
    from monitoring.logged_inputs import logged_days
    from registry.storage import logs_location

    settings = _cli()._settings()
    specs = {s.name: s for s in all_specs(settings.home)}
    if model not in specs:
        raise NotFound(f"no model spec named {model!r} (known: {', '.join(sorted(specs))})")
    spec = specs[model]
    location = logs_location(settings)  # ROOST_LOGS_URL: the sealed log may be on S3
    days = logged_days(settings.logs_dir, model, logs_location=location)
    days = [d for d in days if d >= since] if since else days[-1:]
    if not days:
        raise NotFound(f"model {model!r} has no logged inputs in {location.url}"
                       + (f" since {since}" if since else ""))
    try:
        registry = _cli()._read_registry()
    except RoostError:
        registry = None
    try:
        names, input_name = feature_names_for(registry, spec)
    finally:
        if registry is not None:
            registry.close()
    results = []
    for day in days:
        try:
            result = run_drift(settings.logs_dir, spec, day, names, input_name=input_name,
                               max_rows=max_rows, logs_location=location)
        except NoData as exc:
            click.echo(f"note: {exc}", err=True)
            continue
        results.append(result.to_dict())
    return results


def _print(results: list[dict[str, Any]]) -> None:
    emit = _cli()._emit
    for index, result in enumerate(results):
        if index:
            click.echo("")
        verdict = "DRIFTED" if result["drifted"] else "no drift"
        click.echo(
            f"{result['model']} {result['date']}: {verdict}: share of drifted features "
            f"{result['share_drifted']:.3f} (threshold {result['drift_share']}), "
            f"{result['current_rows']} rows vs {result['reference_rows']} reference rows"
        )
        rows = [
            {**f, "score": f"{f['score']:.4g}", "drifted": "yes" if f["drifted"] else "no"}
            for f in result["features"]
        ]
        emit(rows, False, _COLUMNS)
        click.echo(f"report: {result['report']}")


def add_drift_commands(main: click.Group) -> None:
    """Register ``roost drift`` on the ``roost`` group."""

    @main.command("drift")
    @click.argument("model")
    @click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
                  help="First UTC day (YYYY-MM-DD); default: the newest logged day only.")
    @click.option("--max-rows", type=click.IntRange(min=100), default=250_000,
                  show_default=True, help="Rows of a day compared (a seeded sample above).")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def drift(model: str, since: datetime | None, max_rows: int, as_json: bool) -> None:
        """Data drift of MODEL's logged inputs against its training reference (Evidently)."""
        try:
            results = _analyse(model, since.date() if since else None, max_rows)
        except RoostError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(1)
        if as_json:
            click.echo(json.dumps(results, indent=2, default=str))
        else:
            _print(results)
