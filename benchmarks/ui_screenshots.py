"""Screenshots of the operator's view: a model's lineage with its checks, and a rollout run.

    .venv/bin/python benchmarks/ui_screenshots.py [--out docs/screenshots] [--home DIR]

Without ``--home`` a fresh ROOST_HOME is made in a temporary directory: a scikit-learn
LogisticRegression on the breast-cancer data (skl2onnx, ``zipmap: False``) is registered as
model ``tumor`` and taken through its lineage's validate and rollout materializations (the
first-version path) in the Dagster instance under ``$ROOST_HOME/dagster``. With ``--home`` an
existing one is used as it is (its latest ``<p>_rollout`` run is shown).

Then ``dagster-webserver`` serves that instance and the repository's code location on a free
loopback port, and Debian's headless ``chromium`` saves (``--virtual-time-budget`` lets the
JavaScript app render first):

* ``lineage.png``: the asset graph of the model's group
  (``/locations/<location>/asset-groups/<group>``), check results on the nodes;
* ``checks.png``: the checks tab of ``<p>_staging_tests`` (``/assets/<key>?view=checks``);
* ``rollout_run.png``: the run page (``/runs/<id>``) of the latest rollout run.

``tests/e2e/test_dagster_ui.py`` runs the same functions and asserts on the rendered DOM.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests" / "support")]

from gateway_process import free_port, stop_process, tail  # noqa: E402

MODEL = "tumor"
LOCATION = "orchestration.definitions"
CHROMIUM = "chromium"
BROWSER_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1600,1000",
]


def chromium() -> str | None:
    """The chromium binary, or None when it is not installed."""
    return shutil.which(CHROMIUM)


def make_home(root: Path) -> Path:
    """A ROOST_HOME with ``tumor`` v1 validated and first-deployed through its lineage."""
    import numpy as np
    from dagster import DagsterInstance, materialize
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    from assets.demo_data import load_breast_cancer_dataset
    from assets.lineage import build_lineage
    from assets.resources import RegistryResource
    from assets.spec import parse_spec, write_spec
    from registry import Registry, RoostSettings

    home = root / "home"
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    data = load_breast_cancer_dataset()
    X = data.X.astype(np.float32)
    data.frame[[*data.feature_names, "label"]].to_csv(root / "held_out.csv", index=False)
    spec = parse_spec({
        "name": MODEL,
        "description": "LogisticRegression on the breast-cancer data",
        "held_out": {"path": str(root / "held_out.csv"), "label": "label"},
        "validation": {"metric": "accuracy", "minimum": 0.9, "latency_p99_ms": 100},
        "staging": {"replay_sample": 40, "latency_budget_ms": 2000, "gateway": "in_process"},
        "canary": {"schedule": [20, 50, 100], "step_interval_s": 2, "min_requests": 30},
    })
    write_spec(home, spec)
    clf = LogisticRegression(max_iter=10_000).fit(X, data.y)
    onnx = to_onnx(clf, X[:1], options={"zipmap": False}).SerializeToString()
    reg = Registry.from_settings(RoostSettings(home=home))
    try:
        reg.register_version(MODEL, onnx, registered_by="ui-screenshots")
    finally:
        reg.close()
    lineage = build_lineage(spec)
    resources = {"registry": RegistryResource(home=str(home))}
    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    try:
        with DagsterInstance.get() as instance:
            for selection in (lineage.validate_selection(), lineage.rollout_selection()):
                result = materialize([*lineage.assets, *lineage.checks], selection=selection,
                                     instance=instance, resources=resources,
                                     raise_on_error=False)
                if not result.success:
                    raise RuntimeError(f"materialization failed (run {result.run_id})")
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous
    return home


def latest_rollout_run(home: Path, prefix: str = MODEL) -> str:
    """The id of the newest run that materialized ``<prefix>_canary_deployment``."""
    from dagster import AssetKey, DagsterInstance

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        event = instance.get_latest_materialization_event(AssetKey(f"{prefix}_canary_deployment"))
    if event is None:
        raise RuntimeError(f"no {prefix}_canary_deployment materialization in {home}")
    return event.run_id


@contextlib.contextmanager
def webserver(home: Path, log_path: Path, timeout_s: float = 120.0) -> Iterator[str]:
    """``dagster-webserver`` for ``home``'s instance on a free loopback port; yields its URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(ROOST_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    argv = [str(Path(sys.executable).parent / "dagster-webserver"), "-h", "127.0.0.1",
            "-p", str(port), "-m", LOCATION]
    with log_path.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dagster-webserver did not start:\n{tail(log_path)}")
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        stop_process(proc, timeout_s=20)


def _browser(profile: Path, *args: str, budget_ms: int, timeout_s: float) -> str:
    binary = chromium()
    if binary is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    argv = [binary, *BROWSER_FLAGS, f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}", *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout


def dump_dom(url: str, profile: Path, budget_ms: int = 15_000, timeout_s: float = 90) -> str:
    """The DOM of ``url`` after the app rendered (``--dump-dom``)."""
    return _browser(profile, "--dump-dom", url, budget_ms=budget_ms, timeout_s=timeout_s)


def screenshot(url: str, png: Path, profile: Path, budget_ms: int = 15_000,
               timeout_s: float = 90) -> Path:
    """A 1600x1000 PNG of ``url`` after the app rendered."""
    png.parent.mkdir(parents=True, exist_ok=True)
    _browser(profile, f"--screenshot={png}", url, budget_ms=budget_ms, timeout_s=timeout_s)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {png}")
    return png


def pages(base: str, run_id: str, prefix: str = MODEL) -> dict[str, str]:
    """The operator's pages: name -> URL."""
    return {
        "lineage": f"{base}/locations/{LOCATION}/asset-groups/{prefix}",
        "checks": f"{base}/assets/{prefix}_staging_tests?view=checks",
        "rollout_run": f"{base}/runs/{run_id}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "screenshots")
    parser.add_argument("--home", type=Path, default=None, help="an existing ROOST_HOME")
    args = parser.parse_args()
    if chromium() is None:
        print("error: chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="roost-ui-") as tmp:
        root = Path(tmp)
        home = args.home or make_home(root)
        run_id = latest_rollout_run(home)
        with webserver(home, root / "webserver.log") as base:
            for name, url in pages(base, run_id).items():
                png = screenshot(url, args.out / f"{name}.png", root / f"profile-{name}")
                print(f"{png}  <- {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
