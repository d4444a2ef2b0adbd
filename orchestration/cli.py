"""The ``roost`` command line: everything an operator does, on the local registry."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from functools import cache, wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from registry import Conflict, NotFound, Registry, RoostError, RoostSettings, parse_state
from registry.settings import REGISTRY_FILE, HomeLookup, find_home

P = ParamSpec("P")
R = TypeVar("R")


@cache
def _home_for(env_home: str | None, cwd: str) -> HomeLookup:
    return find_home()


def _home() -> HomeLookup:
    """Where this command's home is and why: looked up once per ROOST_HOME and working
    directory, so an in-process caller (CliRunner, a test) that changes either is not handed
    the home an earlier command found."""
    return _home_for(os.environ.get("ROOST_HOME"), os.getcwd())


_home.cache_clear = _home_for.cache_clear  # type: ignore[attr-defined]


def _settings() -> RoostSettings:
    """Settings with the home :func:`~registry.settings.find_home` finds (ROOST_HOME, else the
    nearest ``.roost/`` holding a registry at or above the current directory, else ``./.roost``).

    Commands that start processes (``serve``'s workers, ``up``'s Dagster) export the home as
    ROOST_HOME themselves, so those use the same one; others leave the environment alone.
    """
    return RoostSettings(home=_home().path)


def _registry() -> Registry:
    return Registry.from_settings(_settings())


def _require_registry(settings: RoostSettings) -> None:
    """Refuse (exit 1) when the home has no registry: read-only commands never create one."""
    if settings.database_url is not None or (settings.home / REGISTRY_FILE).is_file():
        return
    raise NotFound(
        f"no Roost registry at {settings.home / REGISTRY_FILE} ({_home().describe()}); "
        "point the CLI at one with `export ROOST_HOME=/path/to/.roost`, or run it in (or below) "
        "the directory holding the project's .roost/ (`roost env` there prints the exports)"
    )


def _read_registry() -> Registry:
    """The registry for a read-only command (models, versions, show, audit, traffic show, keys
    list, config without changes, triton export): fails with where it looked, never creates one.
    """
    settings = _settings()
    _require_registry(settings)
    return Registry.from_settings(settings)


def friendly_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn Roost errors into one line on stderr and exit code 1 (no traceback)."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except RoostError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(1)

    return wrapper


def _emit(rows: list[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        click.echo("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def _key_values(pairs: tuple[str, ...], option: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=option)
        try:
            out[key] = float(value) if option == "--metric" else value
        except ValueError:
            raise click.BadParameter(f"{key}: expected a number, got {value!r}") from None
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Roost: serve ML models, promote versions safely, measure whether they are better."""


@main.command()
@click.option("--skip-pipeline", is_flag=True, help="Do not materialize the demo pipeline.")
@click.option(
    "--verbose", is_flag=True, help="Also print the pipeline's output (as ROOST_VERBOSE=1)."
)
def up(skip_pipeline: bool, verbose: bool) -> None:
    """Run the platform on embedded defaults with the demo models (Ctrl-C stops it)."""
    from orchestration.up import run_up

    sys.exit(run_up(_settings(), skip_pipeline=skip_pipeline, verbose=verbose))


@main.command()
@click.option("--host", default=None, help="Bind address (default: ROOST_HOST).")
@click.option("--port", type=int, default=None, help="REST port (default: ROOST_HTTP_PORT).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Gateway processes sharing the ports (default: ROOST_WORKERS, 1).",
)
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Run the serving gateway in the foreground."""
    import os
    import tempfile

    settings = _settings()
    os.environ["ROOST_HOME"] = str(settings.home)  # the workers and their settings
    workers = workers or settings.workers
    if host:
        os.environ["ROOST_HOST"] = host
    os.environ["ROOST_WORKERS"] = str(workers)
    if workers > 1 or settings.grpc_processes > 0:
        # every worker (and gRPC process) writes its metrics here; /metrics reports them all
        from serving.metrics import MULTIPROC_ENV

        settings.home.mkdir(parents=True, exist_ok=True)
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="metrics-", dir=settings.home)
    from serving.workers import AddressInUse, run_workers

    try:  # N > 1: one SO_REUSEPORT socket per worker, supervised (serving/workers.py)
        run_workers(
            "serving.app:create_app_from_env",
            host=host or settings.host,
            port=port or settings.http_port,
            workers=workers,
            log_level="warning",
            access_log=False,
            # httptools protocol answering early refusals itself (serving/http_protocol.py)
            http="serving.http_protocol:EarlyRefusalProtocol",
        )
    except AddressInUse as exc:
        raise click.ClickException(f"--port: {exc.strerror}") from None


@main.command("config")
@click.argument("model")
@click.argument("version", type=int)
@click.option("--set", "updates", multiple=True, help="KNOB=VALUE (JSON value), repeatable.")
@click.option("--unset", multiple=True, help="KNOB to reset to its default, repeatable.")
@click.option("--reason", default="configure", help="Why (recorded in the audit trail).")
@friendly_errors
def config_command(
    model: str, version: int, updates: tuple[str, ...], unset: tuple[str, ...], reason: str
) -> None:
    """Show or change a version's serving knobs (max_batch_size, max_queue_delay_ms, ...)."""
    from registry import ServingConfig

    changes: dict[str, Any] = {}
    for item in updates:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KNOB=VALUE, got {item!r}", param_hint="--set")
        try:
            changes[key] = json.loads(raw)
        except json.JSONDecodeError:
            changes[key] = raw
    from warehouse.minimise import LOG_EXCLUDE_KNOB, log_exclude_of

    known = set(ServingConfig.__dataclass_fields__) | {"warmup_inputs", LOG_EXCLUDE_KNOB}
    if LOG_EXCLUDE_KNOB in changes:  # a list, or a comma-separated string, of input names
        changes[LOG_EXCLUDE_KNOB] = sorted(log_exclude_of(changes))
    for key in [*changes, *unset]:
        if key not in known:
            raise click.BadParameter(
                f"unknown knob {key!r}; knobs: {', '.join(sorted(known))}", param_hint="--set"
            )
    changes |= dict.fromkeys(unset)
    registry = _registry() if changes else _read_registry()
    info = (
        registry.set_config(model, version, changes, reason=reason)
        if changes
        else registry.get_version(model, version)
    )
    effective = ServingConfig.from_config(info.config).to_dict()
    click.echo(json.dumps({"stored": info.config, "effective": effective}, indent=2))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def models(as_json: bool) -> None:
    """List models with their version count and production version."""
    rows = [m.to_dict() for m in _read_registry().list_models()]
    _emit(rows, as_json, ["name", "versions", "production_version"])


@main.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def versions(model: str, as_json: bool) -> None:
    """List the versions of MODEL."""
    infos = _read_registry().list_versions(model)
    if as_json:
        _emit([v.to_dict() for v in infos], True, [])
        return
    rows = [
        {
            "version": v.version,
            "state": v.state.value,
            "sha256": v.sha256[:12],
            "registered_by": v.registered_by,
            "created_at": v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        }
        for v in infos
    ]
    _emit(rows, False, ["version", "state", "sha256", "registered_by", "created_at"])


@main.command()
@click.argument("model")
@click.argument("version", type=int)
@friendly_errors
def show(model: str, version: int) -> None:
    """Show everything known about one version (JSON)."""
    click.echo(json.dumps(_read_registry().get_version(model, version).to_dict(), indent=2))


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", "model", required=True, help="Model name to register under.")
@click.option("--feature-names", default=None, help="Comma-separated column order of the input.")
@click.option("--metric", multiple=True, help="KEY=NUMBER, repeatable.")
@click.option("--tag", multiple=True, help="KEY=VALUE, repeatable.")
@click.option("--by", "registered_by", default=None, help="Who registers it.")
@click.option(
    "--reuse",
    is_flag=True,
    help="If MODEL already has a version with these bytes, use it (exit 0) instead of failing.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def register(
    path: Path,
    model: str,
    feature_names: str | None,
    metric: tuple[str, ...],
    tag: tuple[str, ...],
    registered_by: str | None,
    reuse: bool,
    as_json: bool,
) -> None:
    """Register the ONNX file at PATH as the next version of a model.

    Bytes MODEL already has as a version are refused (exit 1, naming that version and its
    state) unless --reuse. A scikit-learn classifier exported with ZipMap is stored with its
    probability tensor as the output (the lineage records the rewrite).
    """
    settings = _settings()
    fresh = settings.database_url is None and not (settings.home / REGISTRY_FILE).is_file()
    result = Registry.from_settings(settings).register(
        model,
        path,
        feature_names=feature_names.split(",") if feature_names else None,
        metrics=_key_values(metric, "--metric"),
        tags=_key_values(tag, "--tag"),
        registered_by=registered_by,
        lineage={"source_path": str(path.resolve())},
    )
    info = result.version
    where = f"state {info.state.value}, sha256:{info.sha256[:12]}"
    if not result.created and not reuse:
        raise Conflict(
            f"{path} is already {model} version {info.version} ({where}); nothing registered. "
            "Pass --reuse to use that version, or register a different file"
        )
    if as_json:
        click.echo(json.dumps({**info.to_dict(), "created": result.created}, indent=2))
    elif not result.created:
        click.echo(f"reusing {model} version {info.version} ({where})")
    else:
        click.echo(f"registered {model} version {info.version} (sha256:{info.sha256[:12]})")
        rewrite = info.lineage.get("rewrite") if "rewritten_from_sha256" in info.lineage else None
        if rewrite is not None:
            labels = info.lineage.get("class_labels", {})
            for name, classes in labels.items():
                click.echo(
                    f"  {rewrite}: output '{name}' is FP32 [N, {len(classes)}], one column per "
                    f"class in this order: {', '.join(map(str, classes))} (the file as given, "
                    f"sha256:{info.lineage['rewritten_from_sha256'][:12]}, is in the lineage)"
                )
    if fresh:
        click.echo(
            f"note: created a new registry in {settings.home}; other shells find it from this "
            "directory or below, or with `export ROOST_HOME=...` (see `roost env`)",
            err=True,
        )


@main.command("env")
def env_command() -> None:
    """Print shell exports for this home and its gateway: eval "$(roost env)".

    ROOST_HOME, ROOST_HTTP (gateway base URL), ROOST_GRPC (gRPC host:port) and DAGSTER_UI,
    from the settings (ROOST_HOST, ROOST_HTTP_PORT, ROOST_GRPC_PORT, ROOST_DAGSTER_PORT).
    """
    lookup = _home()
    settings = RoostSettings(home=lookup.path)
    host = "127.0.0.1" if settings.host in ("", "0.0.0.0") else settings.host
    host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
    lines = [f"# roost home: {lookup.describe()}"]
    if settings.database_url is None and not (settings.home / REGISTRY_FILE).is_file():
        lines.append("# (no registry there yet: `make up` or `roost register` creates it)")
    lines.append(f"export ROOST_HOME={shlex.quote(str(settings.home))}")
    lines.append(f"export ROOST_HTTP={shlex.quote(f'http://{host}:{settings.http_port}')}")
    if settings.grpc_port:
        lines.append(f"export ROOST_GRPC={shlex.quote(f'{host}:{settings.grpc_port}')}")
    else:
        lines.append("# gRPC is off (ROOST_GRPC_PORT=0)")
    lines.append(f"export DAGSTER_UI={shlex.quote(f'http://{host}:{settings.dagster_port}')}")
    click.echo("\n".join(lines))


@main.command()
@click.argument("model")
@click.argument("version", type=int)
@click.argument("state")
@click.option("--reason", required=True, help="Why (recorded in the audit trail).")
@click.option("--actor", default=None, help="Who (default: ROOST_ACTOR).")
@click.option("--force", is_flag=True,
              help="Take the production version out even if nothing else would serve.")
@friendly_errors
def transition(
    model: str, version: int, state: str, reason: str, actor: str | None, force: bool
) -> None:
    """Move a version to STATE, if the lifecycle allows it."""
    info = _registry().transition(
        model, version, parse_state(state), reason=reason, actor=actor, force=force
    )
    click.echo(f"{model} version {version} is now {info.state.value}")


@main.command()
@click.argument("model")
@click.argument("version", type=int)
@click.option("--reason", default="deploy", help="Why (recorded in the audit trail).")
@click.option("--actor", default=None, help="Who (default: ROOST_ACTOR).")
@friendly_errors
def deploy(model: str, version: int, reason: str, actor: str | None) -> None:
    """Make a VALIDATED version the production version of MODEL."""
    dep = _registry().deploy(model, version, reason=reason, actor=actor)
    click.echo(f"{model}: production version is {dep.production_version}")


@main.command()
@click.argument("query")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the result to FILE instead: CSV (.csv) or Parquet (.parquet), by extension.",
)
@friendly_errors
def sql(query: str, as_json: bool, out: Path | None) -> None:
    """Run SQL over the warehouse views (predictions, feedback, predictions_with_feedback,
    shadow_predictions_with_feedback, audit, drift_scores, alerts, experiment_results)."""
    from registry.storage import logs_location
    from warehouse.sql import query_table, run_query

    settings = _settings()
    if not settings.logs_dir.is_dir():
        _require_registry(settings)
    has_registry = settings.database_url is not None or (settings.home / REGISTRY_FILE).is_file()
    registry = Registry.from_settings(settings) if has_registry else None
    logs = logs_location(settings)  # ROOST_LOGS_URL: local or object storage
    try:
        if out is not None:
            suffix = out.suffix.lower()
            if suffix not in (".csv", ".parquet"):
                raise click.BadParameter(
                    f"{out.name}: expected a .csv or .parquet file name", param_hint="--out"
                )
            table = query_table(settings.logs_dir, query, registry=registry, logs_location=logs)
            _write_table(table, out)
            click.echo(f"wrote {table.num_rows} row(s) to {out}")
            return
        columns, rows = run_query(settings.logs_dir, query, registry=registry, logs_location=logs)
    finally:
        if registry is not None:
            registry.close()
    records = [dict(zip(columns, row, strict=True)) for row in rows]
    _emit(records, as_json, columns)
    if not records and next(settings.logs_dir.rglob("*.parquet"), None) is None:
        click.echo(
            f"note: the prediction log in {settings.logs_dir} is empty (ROOST_HOME="
            f"{settings.home}): no gateway on this home has logged a prediction yet",
            err=True,
        )


def _write_table(table: Any, out: Path) -> None:
    """Write an Arrow table as CSV or Parquet (by ``out``'s extension), atomically."""
    import csv

    import pyarrow.parquet as pq

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    if out.suffix.lower() == ".csv":
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(table.column_names)
            for batch in table.to_batches(max_chunksize=10_000):
                columns = [column.to_pylist() for column in batch.columns]
                writer.writerows(zip(*columns, strict=True))
    else:
        pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, out)


@main.group()
def audit() -> None:
    """The tamper-evident audit trail."""


@audit.command("verify")
@friendly_errors
def audit_verify() -> None:
    """Check the hash chain; exit 1 and name the first tampered record if any."""
    result = _read_registry().audit_verify()
    if result.ok:
        click.echo(f"audit trail intact: {result.checked} records verified")
        return
    click.echo(f"audit trail TAMPERED: {result.reason}", err=True)
    sys.exit(1)


@audit.command("log")
@click.option("--model", default=None)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def audit_log(model: str | None, as_json: bool) -> None:
    """List audit records."""
    rows = [
        {
            "id": r.id,
            "ts": r.ts,
            "actor": r.actor,
            "action": r.action,
            "model": r.model,
            "version": r.version,
            "details": json.dumps(r.details),
        }
        for r in _read_registry().audit_records(model)
    ]
    _emit(rows, as_json, ["id", "ts", "actor", "action", "model", "version", "details"])


@main.group()
def triton() -> None:
    """NVIDIA Triton Inference Server interop."""


@triton.command("export")
@click.argument("model")
@click.option("--version", type=int, default=None, help="Version to export (default: production).")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Triton model repository folder to write into (created if missing).",
)
@click.option("--gpu", is_flag=True, help="Instance group kind KIND_GPU instead of KIND_CPU.")
@friendly_errors
def triton_export(model: str, version: int | None, out: Path, gpu: bool) -> None:
    """Write MODEL as a Triton model repository entry: config.pbtxt + <version>/model.onnx."""
    from orchestration.triton_export import export_triton_model

    done = export_triton_model(_read_registry(), model, out, version=version, gpu=gpu)
    click.echo(f"exported {model} version {done.version} to {done.model_dir}")
    click.echo(f"  {done.config_path}")
    click.echo(f"  {done.artifact_path}")


def _show_policy(policy: Any) -> None:
    click.echo(json.dumps(policy.to_dict(), indent=2))


@main.group()
def traffic() -> None:
    """Traffic policies: who answers a model's requests, and who sees mirrored copies."""


@traffic.command("show")
@click.argument("model")
@friendly_errors
def traffic_show(model: str) -> None:
    """Print MODEL's policy (JSON)."""
    _show_policy(_read_registry().get_policy(model))


@traffic.command("set")
@click.argument("model")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--policy", "text", default=None, help="The policy as JSON.")
@click.option("--reason", default="traffic policy", help="Why (recorded in the audit trail).")
@friendly_errors
def traffic_set(model: str, path: Path | None, text: str | None, reason: str) -> None:
    """Replace MODEL's traffic policy (canary, experiments, shadows, segments, bandit, flags)."""
    if (path is None) == (text is None):
        raise click.UsageError("give exactly one of --file or --policy")
    raw = path.read_text() if path is not None else str(text)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from None
    _show_policy(_registry().set_policy(model, data, reason=reason))


@main.command()
@click.argument("model")
@click.argument("version", type=int, required=False)
@click.option("--percent", type=click.FloatRange(0, 100), default=None)
@click.option("--promote", is_flag=True, help="Make the canary the production version.")
@click.option("--rollback", is_flag=True, help="Take traffic off the canary (-> ROLLBACK).")
@click.option("--reason", default="canary", help="Why (recorded in the audit trail).")
@friendly_errors
def canary(
    model: str,
    version: int | None,
    percent: float | None,
    promote: bool,
    rollback: bool,
    reason: str,
) -> None:
    """Start (VERSION --percent P), move (--percent P), promote or roll back MODEL's canary."""
    from registry import traffic_ops

    registry = _registry()
    if promote:
        _show_policy(traffic_ops.promote_canary(registry, model))
    elif rollback:
        _show_policy(registry.rollback_canary(model, reason=reason))
    elif version is not None and percent is not None:
        _show_policy(registry.start_canary(model, version, percent))
    elif percent is not None:
        _show_policy(traffic_ops.move_canary(registry, model, percent))
    else:
        raise click.UsageError("give [VERSION] --percent P, or --promote, or --rollback")


@main.command()
@click.argument("model")
@click.argument("version", type=int)
@click.option("--percent", type=click.FloatRange(0, 100), default=100.0)
@click.option("--remove", is_flag=True, help="Stop mirroring to VERSION.")
@friendly_errors
def shadow(model: str, version: int, percent: float, remove: bool) -> None:
    """Mirror PERCENT of MODEL's requests to VERSION (it never answers callers)."""
    from registry import traffic_ops

    registry = _registry()
    if remove:
        _show_policy(traffic_ops.remove_shadow(registry, model, version))
    else:
        _show_policy(traffic_ops.set_shadow(registry, model, version, percent))


@main.group()
def experiment() -> None:
    """A/B (or A/B/n) experiments with sticky assignment by unit id."""


@experiment.command("start")
@click.argument("model")
@click.option("--id", "experiment_id", required=True)
@click.option("--variant", "variants", multiple=True, required=True, help="[NAME:]VERSION=WEIGHT")
@click.option("--salt", default=None, help="Assignment salt (default: the experiment id).")
@click.option(
    "--share",
    type=click.FloatRange(0, 100, min_open=True),
    default=None,
    help="Percent of the non-canary units in the experiment (default: the largest free range).",
)
@friendly_errors
def experiment_start(
    model: str,
    experiment_id: str,
    variants: tuple[str, ...],
    salt: str | None,
    share: float | None,
) -> None:
    """Split MODEL's traffic between versions by weight (weights sum to 100)."""
    from registry import traffic_ops

    parsed = traffic_ops.parse_variant_pairs(list(variants))
    _show_policy(
        traffic_ops.start_experiment(
            _registry(), model, experiment_id, parsed, salt, share=share
        )
    )


@experiment.command("stop")
@click.argument("model")
@click.option("--id", "experiment_id", required=True)
@friendly_errors
def experiment_stop(model: str, experiment_id: str) -> None:
    """End an experiment; its traffic returns to the canary / production."""
    from registry import traffic_ops

    _show_policy(traffic_ops.stop_experiment(_registry(), model, experiment_id))


@main.group()
def keys() -> None:
    """API keys: roles predict, read, admin; optional model scope and rate limit."""


@keys.command("create")
@click.argument("name")
@click.option("--role", "roles", multiple=True, required=True, help="predict | read | admin")
@click.option("--model", "models", multiple=True, help="Limit the key to MODEL (repeatable).")
@click.option("--rate", type=float, default=0.0, help="Requests per second (0: unlimited).")
@friendly_errors
def keys_create(name: str, roles: tuple[str, ...], models: tuple[str, ...], rate: float) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    from registry.keys import create_key

    plain, key = create_key(_registry(), name, list(roles), list(models) or None, rate)
    click.echo(json.dumps({"key": plain, **key.to_dict()}, indent=2))


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def keys_list(as_json: bool) -> None:
    """List keys (never their secrets)."""
    from registry.keys import list_keys

    rows = [k.to_dict() for k in list_keys(_read_registry())]
    _emit(rows, as_json, ["id", "name", "roles", "models", "rate_limit_rps", "revoked"])


@keys.command("revoke")
@click.argument("key_id")
@friendly_errors
def keys_revoke(key_id: str) -> None:
    """Revoke a key (gateways refuse it within seconds)."""
    from registry.keys import revoke_key

    revoke_key(_registry(), key_id)
    click.echo(f"key {key_id} revoked")


__import__("orchestration.cli_models").cli_models.add_model_commands(main)  # model, validate
__import__("orchestration.cli_rollout").cli_rollout.add_rollout_commands(main)  # promote, rollout
__import__("orchestration.cli_gc").cli_gc.add_gc_command(main)  # gc [--dry-run]
__import__("orchestration.cli_monitoring").cli_monitoring.add_monitoring_commands(main)  # erase
__import__("orchestration.cli_monitoring_drift").cli_monitoring_drift.add_drift_commands(main)
__import__("orchestration.cli_db").cli_db.add_db_commands(main)  # db upgrade|current
__import__("orchestration.cli_governance").cli_governance.add_governance_commands(main)  # quantize
__import__("orchestration.cli_governance_consent").cli_governance_consent.add_consent_commands(main)
__import__("orchestration.cli_llm").cli_llm.add_llm_commands(main)  # llm train|register|...
