"""``roost model add`` and ``roost validate``, run as a user would (subprocesses)."""

from __future__ import annotations

from pathlib import Path

from cli_testing import failed_cleanly, ok, roost

from assets.demo_data import load_breast_cancer_dataset


def test_model_add_register_validate(tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    home = tmp_path / "roost"
    data = load_breast_cancer_dataset()
    csv = tmp_path / "held_out.csv"
    data.frame[[*data.feature_names, "label"]].to_csv(csv, index=False)
    clf = LogisticRegression(max_iter=10_000).fit(data.X, data.y)
    model = tmp_path / "model.onnx"
    model.write_bytes(to_onnx(clf, data.X[:1], options={"zipmap": False}).SerializeToString())

    err = failed_cleanly(roost(home, "model", "add", "lr", "--held-out", str(csv),
                               "--label", "nope"))
    assert "held_out.label: column 'nope' is not in" in err
    out = ok(roost(home, "model", "add", "lr", "--held-out", str(csv), "--label", "label",
                   "--metric", "auc", "--min", "0.9", "--latency-ms", "20"))
    assert (home / "models" / "lr.yaml").exists() and "wrote" in out

    ok(roost(home, "register", str(model), "--model", "lr"))
    out = ok(roost(home, "validate", "lr"))
    for check in ("signature_check", "metric_check", "latency_check", "schema_compat_check"):
        assert f"PASS  {check}" in out
    assert "lr version 1: VALIDATED" in out
    err = failed_cleanly(roost(home, "validate", "nobody"))
    assert "no spec for model 'nobody'" in err
