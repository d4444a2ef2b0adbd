"""``roost quantize`` (an INT8 / FP16 version of a registered version) and
``roost explain-background`` (the background sample a version's explanations compare with).

Both read the model's held-out rows through its spec (:mod:`assets.spec`), like
``roost validate``.
"""

from __future__ import annotations

import json
import sys

import click

from registry import Registry, RoostError, RoostSettings


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.command("quantize")
@click.argument("model")
@click.argument("version", type=int)
@click.option("--mode", type=click.Choice(["dynamic", "static", "fp16"]), default="dynamic",
              show_default=True, help="INT8 dynamic, INT8 static (calibrated), or FP16.")
@click.option("--runs", type=click.IntRange(10, 10_000), default=200, show_default=True,
              help="session.run calls per latency median.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def quantize_command(model: str, version: int, mode: str, runs: int, as_json: bool) -> None:
    """Register a quantized copy of MODEL VERSION as its next version (lineage to VERSION),
    with accuracy, latency and size figures against it; validate it with `roost validate`."""
    from assets.held_out import load_held_out
    from assets.quantize import METRIC_PREFIX, quantize_registered, spec_for

    settings = RoostSettings()
    registry = Registry.from_settings(settings)
    try:
        spec = spec_for(settings.home, model)
        data = load_held_out(spec.held_out, spec.name)
        info = quantize_registered(registry, model, version, mode, data, runs=runs)
    except RoostError as exc:
        _fail(exc.message)
        return
    finally:
        registry.close()
    figures = {
        k.removeprefix(METRIC_PREFIX): v for k, v in info.metrics.items()
        if k.startswith(METRIC_PREFIX)
    }
    if as_json:
        click.echo(json.dumps({**info.to_dict(), "figures": figures}, indent=2))
        return
    click.echo(f"registered {model} version {info.version} ({mode} of version {version}, "
               f"sha256:{info.sha256[:12]})")
    for key in ("accuracy_source", "accuracy", "accuracy_delta", "latency_ratio_1",
                "latency_ratio_256", "size_ratio"):
        if key in figures:
            click.echo(f"  {key}: {figures[key]:.4f}")
    click.echo(f"next: roost validate {model} {info.version}")


@click.command("explain-background")
@click.argument("model")
@click.argument("version", type=int)
@click.option("--rows", type=click.IntRange(1, 10_000), default=None,
              help="Rows to keep (default: ROOST_EXPLAIN_BACKGROUND_ROWS).")
def explain_background(model: str, version: int, rows: int | None) -> None:
    """Store a sample of MODEL's held-out rows as VERSION's explanation background."""
    from assets.held_out import load_held_out
    from assets.quantize import spec_for
    from registry.explain import attach_background

    settings = RoostSettings()
    registry = Registry.from_settings(settings)
    try:
        spec = spec_for(settings.home, model)
        data = load_held_out(spec.held_out, spec.name)
        limit = rows or settings.explain_background_rows
        digest = attach_background(registry, model, version, data.X, limit)
    except RoostError as exc:
        _fail(exc.message)
        return
    finally:
        registry.close()
    click.echo(f"{model} version {version}: background of {min(limit, len(data.X))} rows "
               f"(sha256:{digest[:12]})")


def add_governance_commands(main: click.Group) -> None:
    """Register ``roost quantize`` and ``roost explain-background`` on the ``roost`` group."""
    main.add_command(quantize_command)
    main.add_command(explain_background)
