"""``roost llm ...``: train, register, validate and materialize the project's own language model.

- ``roost llm train [--config demo|tiny] [--minutes N] [--seed S] [--out FILE]``: train on the
  repo's docs and write the ONNX file (tokenizer and chat template inside), printing the
  held-out perplexity next to the unigram baseline;
- ``roost llm register FILE --model NAME``: a text-generation version (``backend: llm`` in its
  serving config, tag ``task: text-generation``); ``roost register`` would store the file too,
  but without that config;
- ``roost llm validate MODEL [VERSION] [--max-perplexity X]``: the checks of
  :mod:`assets.llm_checks`; the version ends VALIDATED or FAILED (then ``roost deploy``);
- ``roost llm demo``: the ``roost-lm`` demo pipeline (trained once into ``$ROOST_HOME/llm``),
  what ``make up`` runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from pathlib import Path
from typing import Any

import click


def _cli() -> Any:
    return importlib.import_module("orchestration.cli")


def add_llm_commands(main: click.Group) -> None:
    """Register the ``roost llm`` group on the ``roost`` group."""
    friendly_errors = _cli().friendly_errors

    @main.group()
    def llm() -> None:
        """The project's own language model: train, register, validate."""

    @llm.command()
    @click.option("--config", "config_name", default="demo", show_default=True,
                  help="A named configuration of llm/configs.yaml (demo, tiny).")
    @click.option("--minutes", type=float, default=None,
                  help="Time budget (default: the configuration's).")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Where to write the ONNX file (default: roost-lm-CONFIG.onnx).")
    @friendly_errors
    def train(config_name: str, minutes: float | None, seed: int, out: Path | None) -> None:
        """Train the model on the repo's docs and export it to ONNX."""
        from llm.config import config_names, load_named_config
        from llm.corpus import load_corpus
        from llm.evaluate import perplexity
        from llm.train import train as run_training

        if config_name not in config_names():
            raise click.BadParameter(f"expected one of {config_names()}",
                                     param_hint="--config")
        if minutes is not None and minutes <= 0:
            raise click.BadParameter("must be positive", param_hint="--minutes")
        result = run_training(load_named_config(config_name), seed=seed, minutes=minutes,
                              log=click.echo)
        data = result.onnx_bytes()
        target = out or Path(f"roost-lm-{config_name}.onnx")
        target.write_bytes(data)
        measured = perplexity(data, load_corpus().held_out_texts())
        click.echo(json.dumps({**result.summary(), "onnx_perplexity": round(
            measured.perplexity, 2), "out": str(target), "bytes": len(data)}, indent=2))

    @llm.command()
    @click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--model", required=True, help="Model name (e.g. roost-lm).")
    @click.option("--registered-by", default=None)
    @friendly_errors
    def register(path: Path, model: str, registered_by: str | None) -> None:
        """Register the ONNX language model at PATH as a text-generation version."""
        from assets.llm_demo import LLM_DEMO, register_llm
        from llm.export import read_metadata

        data = path.read_bytes()
        meta = read_metadata(data)
        if "roost.llm.config" not in meta:
            raise click.BadParameter("not a Roost language model: metadata roost.llm.config "
                                     "missing (see docs/llm.md)", param_hint="PATH")
        summary = {k.removeprefix("roost.llm.training."): _number(v) for k, v in meta.items()
                   if k.startswith("roost.llm.training.")}
        spec = dataclasses.replace(LLM_DEMO, name=model)
        reg = _cli()._registry()
        try:
            out = register_llm(reg, spec, data, summary=summary,
                               lineage={"source_path": str(path.resolve())}, tags={},
                               registered_by=registered_by or "cli")
        finally:
            reg.close()
        click.echo(f"registered {model} version {out['version']} "
                   f"(sha256:{out['sha256'][:12]}, backend llm, state {out['state']})")

    @llm.command()
    @click.argument("model")
    @click.argument("version", type=int, required=False)
    @click.option("--max-perplexity", type=float, default=None,
                  help="Held-out perplexity bar (default: the demo's).")
    @friendly_errors
    def validate(model: str, version: int | None, max_perplexity: float | None) -> None:
        """Validate a text-generation version (default: the newest REGISTERED one)."""
        from assets.llm_demo import LLM_DEMO, llm_validation_report
        from assets.validation_assets import pick_candidate, record_validation

        spec = LLM_DEMO if max_perplexity is None else dataclasses.replace(
            LLM_DEMO, max_perplexity=max_perplexity)
        reg = _cli()._registry()
        try:
            try:
                number = pick_candidate(reg, model, version)
            except Exception as exc:  # dagster.Failure: no candidate
                raise click.ClickException(str(getattr(exc, "description", exc))) from None
            report = llm_validation_report(reg.load_artifact(model, number), spec)
            state = record_validation(reg, {"model": model, "version": number}, report)
        finally:
            reg.close()
        for outcome in report.outcomes:
            click.echo(f"{'PASS' if outcome.passed else 'FAIL'}  {outcome.name}: "
                       f"{outcome.description}")
        click.echo(f"{model} version {number}: {state.value}")
        if not report.passed:
            sys.exit(1)

    @llm.command()
    @click.option("--minutes", type=float, default=None,
                  help="Training budget if no cached model matches (default: 2).")
    @friendly_errors
    def demo(minutes: float | None) -> None:
        """Train (once, cached), register, validate and deploy the roost-lm demo model."""
        ok = materialize_llm_demo(_cli()._settings(), minutes=minutes)
        if not ok:
            raise click.ClickException("the roost-lm pipeline failed; see the Dagster run")
        click.echo("roost-lm is deployed")


def materialize_llm_demo(settings: Any, minutes: float | None = None) -> bool:
    """Run the roost-lm assets in the Dagster instance under ROOST_HOME (visible in the UI)."""
    from dagster import materialize

    from assets.llm_demo import LLM_DEMO, llm_assets
    from assets.resources import RegistryResource
    from orchestration.cli_models import _dagster_instance

    assets, checks = llm_assets()
    run_config: dict[str, Any] = {}
    if minutes is not None:
        run_config = {"ops": {f"{LLM_DEMO.prefix}_trained_model": {"config": {
            "minutes": minutes}}}}
    with _dagster_instance(settings) as instance:
        result = materialize([*assets, *checks], instance=instance, run_config=run_config,
                             resources={"registry": RegistryResource(home=str(settings.home))},
                             raise_on_error=False)
    return bool(result.success)


def _number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


LLM_DEMO_ENV = "ROOST_LLM_DEMO"


def llm_demo_enabled() -> bool:
    """``make up`` sets ROOST_LLM_DEMO=1; a bare ``roost up`` leaves the language model out (its
    first training takes about two minutes)."""
    import os

    return os.environ.get(LLM_DEMO_ENV, "").lower() in ("1", "true", "yes")


def run_llm_demo_for_up(settings: Any, logs: Path, verbose: bool) -> None:
    """``roost up``'s roost-lm step: deploy it unless it already serves; a failure only warns
    (the other demo models still come up)."""
    from orchestration.logs import quiet_output
    from registry import Registry

    if not llm_demo_enabled():
        return
    registry = Registry.from_settings(settings)
    try:
        deployment = registry.get_deployment("roost-lm")
    finally:
        registry.close()
    sample = (f"roost:   curl -s http://{settings.host}:{settings.http_port}/v1/completions "
              "-H 'content-type: application/json' "
              """-d '{"model": "roost-lm", "prompt": "The registry", "max_tokens": 32}'""")
    if deployment is not None and deployment.production_version is not None:
        print("roost: roost-lm already deployed; reusing it", flush=True)
        print(sample, flush=True)
        return
    log_path = logs / "llm.log"
    print(f"roost: training (once, cached in {settings.home / 'llm'}), validating and "
          f"deploying roost-lm (log: {log_path}) ...", flush=True)
    if verbose:
        ok = materialize_llm_demo(settings)
    else:
        with quiet_output(log_path):
            ok = materialize_llm_demo(settings)
    print("roost: roost-lm deployed\n" + sample if ok else
          f"roost: warning: the roost-lm pipeline failed (a run starved of CPU can miss the "
          f"perplexity bar; the next run trains again); see {log_path}", flush=True)
