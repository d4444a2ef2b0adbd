"""Quantizing a registered digits MLP: a new version with lineage and figures, validated like any
version, then canaried like any version.

The MLP is the benchmarks' (``benchmarks/digits_model.py``) with one small hidden layer so it
trains in about a second. Accuracy tolerance: INT8 weights (per-tensor scales) and calibrated
UINT8 activations move each logit by well under 1% of its range on this model, so a label
changes only for rows already near a tie: at most 2 points of accuracy (9 of 450 rows) and 97%
agreement with the FP32 labels. Measured: 0 to 0.4 points.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_testing import as_json, failed_cleanly, ok, roost

from assets.held_out import load_held_out
from assets.quantize import quantize_registered, spec_for
from registry import InvalidRequest, Registry, RoostSettings, State
from registry.explain import BACKGROUND_METRIC, decode_background

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ (not a package)
from benchmarks.digits_model import train_digits_mlp  # noqa: E402

MODEL = "digits"
FEATURES = [f"px{i}" for i in range(64)]
TOLERANCE = 0.02


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A home with the digits spec (held-out CSV) and the FP32 MLP registered as version 1."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    root = tmp_path_factory.mktemp("quantize")
    home = root / "roost"
    features, labels = load_digits(return_X_y=True)
    features = (features / 16.0).astype(np.float32)
    _, x_test, _, y_test = train_test_split(
        features, labels, test_size=0.25, random_state=0, stratify=labels
    )
    import pandas as pd

    frame = pd.DataFrame(x_test, columns=FEATURES)
    frame["digit"] = y_test
    csv = root / "held_out.csv"
    frame.to_csv(csv, index=False)
    data, facts = train_digits_mlp(hidden=(128,), max_iter=60)
    onnx_file = root / "digits.onnx"
    onnx_file.write_bytes(data)
    ok(roost(home, "model", "add", MODEL, "--held-out", str(csv), "--label", "digit",
             "--metric", "accuracy", "--min", "0.85", "--latency-ms", "20"))
    ok(roost(home, "register", str(onnx_file), "--model", MODEL,
             "--feature-names", ",".join(FEATURES)))
    return {"home": home, "facts": facts}


def _registry(home: Path) -> Registry:
    return Registry.from_settings(RoostSettings(home=home))


def test_static_quantize_validate_canary(digits: dict[str, Any]) -> None:
    home = digits["home"]
    out = as_json(roost(home, "quantize", MODEL, "1", "--mode", "static", "--runs", "30",
                        "--json"))
    version = out["version"]
    assert version == 2 and out["state"] == "REGISTERED"
    reg = _registry(home)
    try:
        source = reg.get_version(MODEL, 1)
        info = reg.get_version(MODEL, version)
        assert info.lineage["quantized_from"] == {
            "model": MODEL, "version": 1, "sha256": source.sha256,
        }
        assert info.lineage["mode"] == "static" and info.lineage["calibration_rows"] == 150
        figures = out["figures"]
        for key in ("accuracy_delta", "latency_ratio_1", "latency_ratio_256", "size_ratio"):
            assert info.metrics[f"quantization.{key}"] == figures[key]
        assert abs(figures["accuracy_delta"]) <= TOLERANCE
        assert figures["label_agreement"] >= 0.97
        assert figures["size_ratio"] < 0.6  # INT8 weights: about a quarter, plus scales
        assert figures["eval_rows"] == 300  # calibration rows are not scored
        assert list(info.signature.feature_names or []) == FEATURES
        # the background the explanations compare with, stored (sha256-checked) with it
        background = decode_background(reg.artifacts.get(info.metrics[BACKGROUND_METRIC]))
        assert background.shape == (100, 64)
    finally:
        reg.close()

    done = ok(roost(home, "validate", MODEL, str(version)))
    assert f"{MODEL} version {version}: VALIDATED" in done
    assert "PASS  metric_check" in done

    # it is just a version: canaried against production like any other
    reg = _registry(home)
    try:
        reg.transition(MODEL, 1, State.VALIDATING, reason="test")
        reg.transition(MODEL, 1, State.VALIDATED, reason="test")
        reg.deploy(MODEL, 1, reason="test")
        policy = reg.start_canary(MODEL, version, 10.0)
        assert json.dumps(policy.to_dict()).count(f'"version": {version}') >= 1
    finally:
        reg.close()


def test_dynamic_quantize_in_process_and_refusals(digits: dict[str, Any]) -> None:
    home = digits["home"]
    reg = _registry(home)
    try:
        spec = spec_for(home, MODEL)
        data = load_held_out(spec.held_out, spec.name)
        info = quantize_registered(reg, MODEL, 1, "dynamic", data, runs=20)
        assert info.lineage["mode"] == "dynamic" and info.lineage["calibration_rows"] == 0
        assert abs(info.metrics["quantization.accuracy_delta"]) <= TOLERANCE
        assert info.metrics["quantization.size_ratio"] < 0.6
        with pytest.raises(InvalidRequest, match="already quantized"):
            quantize_registered(reg, MODEL, info.version, "static", data)
        with pytest.raises(InvalidRequest, match="mode: expected one of dynamic, static, fp16"):
            quantize_registered(reg, MODEL, 1, "int4", data)
    finally:
        reg.close()
    err = failed_cleanly(roost(home, "quantize", "nobody", "1"))
    assert "no spec for model 'nobody'" in err


def test_quantize_job(digits: dict[str, Any]) -> None:
    """The Dagster job does the same with run config (model, version, mode)."""
    from assets.quantize import quantize_job
    from assets.resources import RegistryResource

    result = quantize_job.execute_in_process(
        run_config={"ops": {"quantize_version": {"config": {
            "model": MODEL, "version": 1, "mode": "fp16"}}}},
        resources={"registry": RegistryResource(home=str(digits["home"]))},
    )
    assert result.success
    out = result.output_for_node("quantize_version")
    reg = _registry(digits["home"])
    try:
        info = reg.get_version(MODEL, out["version"])
    finally:
        reg.close()
    assert info.lineage["mode"] == "fp16"
    assert abs(out["quantization.accuracy_delta"]) <= TOLERANCE
