"""Quantization of the digits MLP: accuracy delta, latency ratios and size ratio per mode.

Trains :func:`benchmarks.digits_model.train_digits_mlp` (default: hidden (2048, 2048), 10
epochs; scikit-learn's bundled digits, 75/25 stratified split, seed 0), quantizes it with
:func:`registry.quantize.quantize` (static: calibrated on 200 training rows) and measures it
with :func:`registry.quantize.compare` on the 450 test rows: accuracy delta, median
``session.run`` latency ratio (one intra-op thread) for 1 row and 256 rows, size ratio.

    .venv/bin/python benchmarks/quantize_bench.py [--hidden 2048,2048] [--runs 200]

Prints one JSON object per mode (the figures benchmarks/RESULTS.md records).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.digits_model import train_digits_mlp  # noqa: E402
from registry.quantize import MODES, compare, quantize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", default="2048,2048")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    hidden = tuple(int(h) for h in args.hidden.split(","))
    data, facts = train_digits_mlp(hidden=hidden, max_iter=args.epochs)
    features, labels = load_digits(return_X_y=True)
    features = (features / 16.0).astype(np.float32)
    x_train, x_test, _, y_test = train_test_split(
        features, labels, test_size=0.25, random_state=0, stratify=labels
    )
    print(json.dumps({"hidden": list(hidden), "onnx_bytes": len(data),
                      "test_accuracy": facts["test_accuracy"]}))
    for mode in MODES:
        candidate = quantize(data, mode, x_train[:200])
        figures = compare(data, candidate, x_test, y_test, runs=args.runs)
        print(json.dumps({"mode": mode, **{k: round(v, 4) for k, v in figures.items()}}))


if __name__ == "__main__":
    main()
