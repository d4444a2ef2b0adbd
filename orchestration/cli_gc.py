"""``roost gc [--dry-run]``: the registry garbage collection of :mod:`assets.registry_gc`.

Archives DEPRECATED versions older than ``--retention-days`` (default
``ROOST_DEPRECATED_RETENTION_DAYS``) and deletes archived artifacts no live version shares; never
a serving version or a model's rollback target. ``--dry-run`` prints what it would do.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

import click


def add_gc_command(main: click.Group) -> None:
    """Register ``roost gc`` on the ``roost`` group."""
    friendly_errors = importlib.import_module("orchestration.cli").friendly_errors

    @main.command()
    @click.option("--dry-run", is_flag=True, help="Print what would be archived and deleted.")
    @click.option("--retention-days", type=float, default=None,
                  help="Days a DEPRECATED version is kept (default "
                       "ROOST_DEPRECATED_RETENTION_DAYS, 30).")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @friendly_errors
    def gc(dry_run: bool, retention_days: float | None, as_json: bool) -> None:
        """Archive long-deprecated versions and delete their unshared artifacts."""
        from assets.registry_gc import collect_garbage

        cli: Any = importlib.import_module("orchestration.cli")
        settings = cli._settings()
        days = settings.deprecated_retention_days if retention_days is None else retention_days
        if days < 0:
            raise click.BadParameter("must be >= 0", param_hint="--retention-days")
        cli._require_registry(settings)
        registry = cli._registry()
        try:
            report = collect_garbage(registry, retention_days=days, dry_run=dry_run)
        finally:
            registry.close()
        if as_json:
            click.echo(json.dumps({
                "dry_run": report.dry_run, "retention_days": report.retention_days,
                "archived": [{"model": m, "version": v} for m, v in report.archived],
                "kept": [{"model": m, "version": v, "why": why}
                         for (m, v), why in sorted(report.kept.items())],
                "deleted": report.deleted, "freed_bytes": report.freed_bytes,
            }, indent=2))
            return
        for line in report.lines():
            click.echo(line)
