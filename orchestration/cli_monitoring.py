"""``roost erase`` (GDPR erasure of one user's rows) and ``roost retention`` (delete expired
partitions now); registered on the main group by :func:`add_monitoring_commands`."""

from __future__ import annotations

import json
import sys

import click


def add_monitoring_commands(main: click.Group) -> None:
    main.add_command(erase)
    main.add_command(retention)


@click.command()
@click.option("--user", "user_id", required=True, help="The user id as clients send it.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; change nothing.")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="Seconds to wait for live gateways to seal the segments written before the erasure.",
)
@click.option("--actor", default=None, help="Who (recorded in the audit trail).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def erase(user_id: str, dry_run: bool, wait_s: float, actor: str | None, as_json: bool) -> None:
    """Remove every prediction and feedback row of a user (Parquet and unsealed write-ahead
    log), safely while gateways keep writing; audited (a digest of the id, counts, files)."""
    from orchestration.cli import _read_registry, _settings, friendly_errors
    from registry.storage import logs_location
    from warehouse.erasure import erase_user, record_erasure
    from warehouse.minimise import UserIdHasher

    @friendly_errors
    def run() -> None:
        settings = _settings()
        registry = None if dry_run else _read_registry()
        hasher = UserIdHasher.from_settings(settings, warn=False)
        if not hasher.keyed:
            click.echo("note: ROOST_USER_ID_KEY is not set: matching the id as given", err=True)
        try:
            report = erase_user(settings.logs_dir, user_id, hasher=hasher, dry_run=dry_run,
                                wait_s=wait_s, logs_location=logs_location(settings))
            if registry is not None:
                record_erasure(registry, report, actor)
        finally:
            if registry is not None:
                registry.close()
        details = report.audit_details()
        if as_json:
            click.echo(json.dumps({"dry_run": dry_run, **details}, indent=2))
        else:
            verb = "would remove" if dry_run else "removed"
            click.echo(
                f"{verb} {report.prediction_rows + report.wal_rows} prediction row(s) "
                f"({report.wal_rows} of them in the write-ahead log) and "
                f"{report.feedback_rows} feedback row(s) of user sha256:{report.user_sha256[:16]}"
            )
            for change in details["files"]:
                click.echo(f"  {change['path']}: -{change['rows_removed']} "
                           f"({change['rows_left']} left)")  # fmt: skip
        if report.unsealed_left:
            click.echo(
                f"warning: {len(report.unsealed_left)} live segment(s) not sealed after "
                f"{wait_s:g}s; their rows of this user are dropped when they are sealed",
                err=True,
            )
            sys.exit(2)

    run()


@click.command()
@click.option("--dry-run", is_flag=True, help="List the expired partitions; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def retention(dry_run: bool, as_json: bool) -> None:
    """Delete prediction, feedback and feature partitions past their retention (audited)."""
    from orchestration.cli import _read_registry, _settings, friendly_errors
    from warehouse.retention import apply_retention

    @friendly_errors
    def run() -> None:
        settings = _settings()
        registry = None if dry_run else _read_registry()
        try:
            report = apply_retention(settings, registry=registry, dry_run=dry_run)
        finally:
            if registry is not None:
                registry.close()
        if as_json:
            click.echo(json.dumps(report.audit_details(), indent=2))
            return
        verb = "would delete" if dry_run else "deleted"
        click.echo(f"{verb} {len(report.partitions)} partition(s), {report.rows} row(s)")
        for part in report.partitions:
            click.echo(f"  {part.path}: {part.rows} row(s) in {part.files} file(s)")

    run()
