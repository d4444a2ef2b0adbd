"""``roost consent grant|withdraw|show --user ID --purpose P``: consent tracking
(registry/consent.py). ``withdraw --erase`` also erases the user's logged predictions and
feedback (warehouse/erasure.py, audited like ``roost erase``)."""

from __future__ import annotations

import json
import sys

import click

from registry.consent import PURPOSES

_PURPOSE = click.Choice([*PURPOSES, "all"])


def _run(user: str, purposes: tuple[str, ...], granted: bool | None, actor: str | None,
         as_json: bool, erase: bool = False) -> None:
    from orchestration.cli import _registry, _settings, friendly_errors
    from registry.consent import ConsentStore
    from warehouse.minimise import UserIdHasher

    @friendly_errors
    def run() -> None:
        settings = _settings()
        registry = _registry()
        try:
            store = ConsentStore(registry, UserIdHasher.from_settings(settings, warn=False))
            names = list(PURPOSES) if "all" in purposes or not purposes else list(purposes)
            records = (store.get(user) if granted is None
                       else store.set(user, names, granted, actor=actor))
            erased = None
            if erase:
                from registry.storage import logs_location
                from warehouse.erasure import erase_user, record_erasure

                report = erase_user(settings.logs_dir, user,
                                    hasher=UserIdHasher.from_settings(settings, warn=False),
                                    logs_location=logs_location(settings))
                record_erasure(registry, report, actor)
                erased = report.prediction_rows + report.wal_rows
        finally:
            registry.close()
        if as_json:
            click.echo(json.dumps({"purposes": [r.to_dict() for r in records],
                                   "erased_prediction_rows": erased}, indent=2))
            return
        for r in records:
            state = "granted" if r.granted else "withdrawn"
            when = r.updated_at.isoformat() if r.updated_at else "no record (default)"
            click.echo(f"{r.purpose:16} {state:10} {when}")
        if erased is not None:
            click.echo(f"erased {erased} prediction row(s) of this user")

    run()


def add_consent_commands(main: click.Group) -> None:
    @main.group()
    def consent() -> None:
        """Consent per user and purpose (logging, training, personalization); audited."""

    user_opt = click.option("--user", "user", required=True, help="The user id (roost-user).")
    purpose_opt = click.option("--purpose", "purposes", type=_PURPOSE, multiple=True,
                               help="Purpose (repeatable; default/all: every purpose).")
    actor_opt = click.option("--actor", default=None, help="Who (recorded in the audit trail).")
    json_opt = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")

    @consent.command("grant")
    @user_opt
    @purpose_opt
    @actor_opt
    @json_opt
    def grant(user: str, purposes: tuple[str, ...], actor: str | None, as_json: bool) -> None:
        """Record that USER grants the purposes."""
        _run(user, purposes, True, actor, as_json)

    @consent.command("withdraw")
    @user_opt
    @purpose_opt
    @actor_opt
    @json_opt
    @click.option("--erase", is_flag=True,
                  help="Also erase the user's logged predictions and feedback (roost erase); "
                       "only with every purpose withdrawn.")
    def withdraw(user: str, purposes: tuple[str, ...], actor: str | None, as_json: bool,
                 erase: bool) -> None:
        """Record that USER withdraws the purposes (the gateways stop logging the user's
        inputs and outputs; the staging replay skips the user's rows)."""
        if erase and purposes and "all" not in purposes and set(purposes) != set(PURPOSES):
            click.echo("error: --erase: withdraw every purpose (omit --purpose or use all)",
                       err=True)
            sys.exit(2)
        _run(user, purposes, False, actor, as_json, erase=erase)

    @consent.command("show")
    @user_opt
    @json_opt
    def show(user: str, as_json: bool) -> None:
        """Print USER's consent per purpose."""
        _run(user, (), None, None, as_json)
