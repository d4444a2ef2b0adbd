"""Held-out data of a model spec, loaded as a :class:`~assets.demo_data.Dataset`.

A CSV or Parquet file (the spec's ``held_out.path``: feature columns and a 0/1 label column) or a
demo generator (``held_out.demo``). The features default to every column but the label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from assets.demo_data import Dataset, generate_fraud_transactions, load_breast_cancer_dataset
from assets.spec import HeldOutData, SpecError


def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise SpecError(f"held_out.path: {path} does not exist")
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path)
    return pd.read_parquet(path)


def load_held_out(held_out: HeldOutData, name: str) -> Dataset:
    """The held-out rows of model ``name`` (features in the spec's order, then the label)."""
    if held_out.demo is not None:
        if held_out.demo == "breast-cancer":
            return load_breast_cancer_dataset()
        return generate_fraud_transactions()
    assert held_out.path is not None  # the spec guarantees one of path / demo
    path = Path(held_out.path).expanduser()
    frame = _read(path)
    if held_out.label not in frame.columns:
        raise SpecError(
            f"held_out.label: column {held_out.label!r} is not in {path} "
            f"(columns: {', '.join(map(str, frame.columns))})"
        )
    features = held_out.features or [str(c) for c in frame.columns if c != held_out.label]
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise SpecError(f"held_out.features: {path} lacks columns {missing}")
    if not features:
        raise SpecError(f"held_out.features: {path} has no feature columns")
    try:
        frame[features].to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"held_out.features: {path} has non-numeric features: {exc}") from None
    return Dataset(
        name=f"{name}:{path.name}",
        frame=frame[[*features, held_out.label]].reset_index(drop=True),
        feature_names=list(features),
        label=held_out.label,
    )
