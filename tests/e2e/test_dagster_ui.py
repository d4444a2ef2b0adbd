"""The operator's view in a real browser: Debian's headless chromium on the Dagster UI.

A fresh ROOST_HOME with a user model taken through its lineage (validate, then the rollout's
first-version path), ``dagster-webserver`` on a free loopback port, and chromium rendering the
model's asset graph, the staging checks and the rollout run; the rendered DOM must name the
lineage's assets, the checks and the run's steps. Skipped (with the reason) when chromium is not
installed. ``benchmarks/ui_screenshots.py`` takes the same pages as PNGs for docs/screenshots.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ui_screenshots.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ui_screenshots", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ui = _load_script()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """(webserver URL, rollout run id, tmp dir) for a home with ``tumor`` v1 deployed."""
    if ui.chromium() is None:
        pytest.skip("chromium is not installed (apt-get install chromium); .ci/run installs it")
    root = tmp_path_factory.mktemp("dagster_ui")
    home = ui.make_home(root)
    run_id = ui.latest_rollout_run(home)
    with ui.webserver(home, root / "webserver.log") as base:
        yield base, run_id, root


def _text(dom: str) -> str:
    return re.sub(r"<[^>]+>", " ", dom)


def _rendered(url: str, profile: Path, needle: str, attempts: int = 3) -> str:
    """The DOM of ``url`` once it holds ``needle``: chromium's virtual-time budget does not wait
    for the UI's GraphQL answers, which on a busy machine can come after the dump; the page is
    loaded again (at most ``attempts`` times) and the caller checks the last DOM."""
    dom = ""
    for attempt in range(attempts):
        dom = ui.dump_dom(url, profile.with_name(f"{profile.name}-{attempt}"))
        if needle in dom:
            break
    return dom


def test_the_asset_graph_shows_the_models_lineage_and_checks(
    served: tuple[str, str, Path],
) -> None:
    base, run_id, root = served
    urls = ui.pages(base, run_id)
    dom = _rendered(urls["lineage"], root / "profile-lineage", "Materialize all")
    # the graph's nodes shorten long names ("tumor_..._deployment"): the short ones in full,
    # the deployment stages by their ending, and the group's count of materializable assets
    for stage in ("candidate", "validation", "serving"):
        assert f"tumor_{stage}" in dom, f"tumor_{stage} not on {urls['lineage']}"
    text = _text(dom)
    assert text.count("_deployment") >= 3 and "_tests" in text
    assert "Materialize all (7)" in text
    png = ui.screenshot(urls["lineage"], root / "lineage.png", root / "profile-shot")
    assert png.stat().st_size > 20_000  # a rendered graph, not a blank page

    checks = _text(_rendered(urls["checks"], root / "profile-checks", "staging_agreement_check"))
    for check in ("staging_error_rate_check", "staging_latency_check",
                  "staging_agreement_check"):
        assert check in checks, f"{check} not on {urls['checks']}"


def test_the_rollout_run_page_shows_its_steps(served: tuple[str, str, Path]) -> None:
    base, run_id, root = served
    url = ui.pages(base, run_id)["rollout_run"]
    dom = _rendered(url, root / "profile-run", "tumor_canary_deployment")
    assert run_id[:8] in dom
    for step in ("tumor_staging_deployment", "tumor_staging_tests", "tumor_canary_deployment"):
        assert step in dom, f"{step} not on {url}"
