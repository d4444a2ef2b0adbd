"""A language model's lifecycle: the roost-lm assets on a real Dagster instance and registry
(tiny configuration), the cache, and the CLI blocking a random-weights version."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from dagster import DagsterInstance, materialize

from assets.llm_checks import check_perplexity
from assets.llm_demo import LLM_DEMO, llm_assets
from assets.resources import RegistryResource
from llm.cache import cache_key, store, trained_model
from llm.config import load_named_config
from llm.corpus import load_corpus
from llm.export import build_random_model
from llm.train import TrainResult
from orchestration.cli import main
from orchestration.cli_llm import LLM_DEMO_ENV, run_llm_demo_for_up
from registry import Registry, RoostSettings, State

TINY = {"ops": {f"{LLM_DEMO.prefix}_trained_model": {"config": {"config": "tiny"}}}}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_trained: TrainResult) -> Path:
    """A home whose cache holds the tiny model (trained once for the session)."""
    home = tmp_path_factory.mktemp("llm_home")
    store(home, cache_key("tiny", 0, None, load_corpus()), tiny_trained)
    return home


@pytest.fixture(scope="module")
def pipeline_run(home: Path) -> bool:
    assets, checks = llm_assets()
    with DagsterInstance.ephemeral() as instance:
        result = materialize([*assets, *checks], instance=instance, run_config=TINY,
                             resources={"registry": RegistryResource(home=str(home))},
                             raise_on_error=False)
        checks_passed = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks_passed == {"contract_check": True, "perplexity_check": True,
                             "decode_latency_check": True}
    return bool(result.success)


@pytest.fixture
def reg(home: Path) -> Iterator[Registry]:
    registry = Registry.from_settings(RoostSettings(home=home))
    yield registry
    registry.close()


def test_pipeline_trains_registers_validates_and_deploys(pipeline_run: bool,
                                                         reg: Registry) -> None:
    assert pipeline_run
    info = reg.get_version("roost-lm", 1)
    assert info.state is State.PRODUCTION
    assert info.config == {"backend": "llm"}
    assert info.tags["task"] == "text-generation"
    assert info.metrics["validation.perplexity.perplexity"] <= LLM_DEMO.max_perplexity
    assert info.metrics["train.steps"] > 0
    assert [i.name for i in info.signature.inputs][:3] == [
        "input_ids", "position_ids", "attention_mask"]


def test_training_is_cached_in_the_home(pipeline_run: bool, home: Path) -> None:
    # one corpus for both calls: other work may edit the repo's docs in between
    corpus = load_corpus()
    first = trained_model(home, "tiny", corpus=corpus)  # the pipeline's file, unless edited
    again = trained_model(home, "tiny", corpus=corpus)
    assert not again.trained_now and again.path == first.path
    assert again.path.parent == home / "llm"
    assert again.summary["cache_key"] in again.path.name
    refused = trained_model(home, "tiny", corpus=corpus, good_enough=lambda summary: False)
    assert refused.trained_now and refused.path == first.path  # trained again, same key


def test_random_weights_are_blocked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    random_model = build_random_model(load_named_config(LLM_DEMO.config).model, seed=1)
    bar = LLM_DEMO.max_perplexity
    outcome = check_perplexity(random_model, load_corpus().held_out_texts(), bar)
    assert not outcome.passed and float(outcome.metadata["perplexity"]) > bar

    monkeypatch.setenv("ROOST_HOME", str(tmp_path))
    path = tmp_path / "random.onnx"
    path.write_bytes(random_model)
    runner = CliRunner()
    registered = runner.invoke(main, ["llm", "register", str(path), "--model", "lm-random"])
    assert registered.exit_code == 0, registered.output
    assert "backend llm" in registered.output
    validated = runner.invoke(main, ["llm", "validate", "lm-random"])
    assert validated.exit_code == 1, validated.output
    assert "FAIL  perplexity" in validated.output
    assert "lm-random version 1: FAILED" in validated.output
    registry = Registry.from_settings(RoostSettings(home=tmp_path))
    try:
        assert registry.get_version("lm-random", 1).state is State.FAILED
    finally:
        registry.close()


def test_cli_refuses_a_file_that_is_not_a_language_model(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setenv("ROOST_HOME", str(tmp_path))
    path = tmp_path / "not-lm.onnx"
    path.write_bytes(b"not onnx")
    result = CliRunner().invoke(main, ["llm", "register", str(path), "--model", "x"])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    bad = CliRunner().invoke(main, ["llm", "train", "--config", "huge"])
    assert bad.exit_code == 2 and "--config" in bad.output


def test_roost_up_step_reuses_a_deployed_model(pipeline_run: bool, home: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    settings = RoostSettings(home=home)
    monkeypatch.delenv(LLM_DEMO_ENV, raising=False)
    run_llm_demo_for_up(settings, home, verbose=False)  # off unless asked (make up asks)
    assert capsys.readouterr().out == ""
    monkeypatch.setenv(LLM_DEMO_ENV, "1")
    run_llm_demo_for_up(settings, home, verbose=False)
    assert "roost-lm already deployed; reusing it" in capsys.readouterr().out


def test_cli_trains_and_writes_the_artifact(tmp_path: Path) -> None:
    out = tmp_path / "lm.onnx"
    result = CliRunner().invoke(main, ["llm", "train", "--config", "tiny", "--minutes", "2",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["config"] == "tiny" and summary["bytes"] == out.stat().st_size
    assert summary["onnx_perplexity"] < summary["unigram_perplexity"]
