"""A version's signature: the names, Open Inference Protocol datatypes and shapes of its tensors.

Shapes use ``-1`` for a dynamic dimension (usually the batch). ``feature_names`` gives the column
order of a single 2-D input so that record-style requests (KServe v1 ``instances``) can be mapped.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Open Inference Protocol datatype -> numpy dtype. BYTES travel as numpy object arrays.
OIP_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

# ONNX tensor element type names (as onnxruntime reports them) -> OIP datatype.
ONNX_TO_OIP: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


@functools.lru_cache(maxsize=64)
def numpy_to_oip(dtype: np.dtype[Any]) -> str:
    """The OIP datatype of a numpy dtype (strings and objects are BYTES); cached: every output
    of every response asks, with a handful of dtypes."""
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    for name, candidate in OIP_TO_NUMPY.items():
        if candidate == dtype:
            return name
    raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a signature."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"]))


@dataclass(frozen=True)
class Signature:
    """Inputs and outputs of a model version, plus the feature order of a tabular input."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    feature_names: tuple[str, ...] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = [t.to_dict() for t in self.inputs]
        data["outputs"] = [t.to_dict() for t in self.outputs]
        data["feature_names"] = list(self.feature_names) if self.feature_names else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        names = data.get("feature_names")
        return cls(
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
            feature_names=tuple(names) if names else None,
        )

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)


def _dims(shape: list[Any]) -> tuple[int, ...]:
    # onnxruntime reports symbolic dims as strings or None: both are dynamic.
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


ZIPMAP_HINT = (
    'a scikit-learn classifier exported with ZipMap? export with skl2onnx.to_onnx(model, X[:1], '
    'options={"zipmap": False}) (onnxmltools: zipmap=False)'
)


class UnsupportedType(ValueError):
    """A model input or output whose ONNX type has no Open Inference Protocol datatype."""

    def __init__(self, role: str, name: str, onnx_type: str) -> None:
        self.role = role
        self.name = name
        self.onnx_type = onnx_type
        message = (
            f"{role} '{name}' has unsupported ONNX type {onnx_type} "
            f"(expected a tensor of {', '.join(t[len('tensor('):-1] for t in ONNX_TO_OIP)})"
        )
        if onnx_type.startswith("seq(map("):
            message += f"; {ZIPMAP_HINT}"
        super().__init__(message)


def signature_from_onnx(model_bytes: bytes, feature_names: list[str] | None = None) -> Signature:
    """Read the signature of an ONNX model from its graph's inputs and outputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])

    def spec(node: Any, role: str) -> TensorSpec:
        if node.type not in ONNX_TO_OIP:
            raise UnsupportedType(role, node.name, node.type)
        return TensorSpec(node.name, ONNX_TO_OIP[node.type], _dims(list(node.shape)))

    inputs = tuple(spec(n, "input") for n in session.get_inputs())
    outputs = tuple(spec(n, "output") for n in session.get_outputs())
    if feature_names is not None:
        if len(inputs) != 1 or len(inputs[0].shape) != 2:
            raise ValueError("feature_names need a model with exactly one 2-D input")
        width = inputs[0].shape[1]
        if width not in (-1, len(feature_names)):
            raise ValueError(
                f"feature_names has {len(feature_names)} names but input "
                f"'{inputs[0].name}' has {width} columns"
            )
    return Signature(inputs, outputs, tuple(feature_names) if feature_names else None)
