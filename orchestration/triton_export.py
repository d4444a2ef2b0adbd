"""Export a registry version as a Triton Inference Server model repository.

``DIR/<model>/config.pbtxt`` and ``DIR/<model>/<version>/model.onnx``: the artifact is the
registry's bytes, sha256-verified on the way out; the config carries the version's signature
and serving knobs under Triton's names (they are Triton's names already, see
:class:`registry.ServingConfig`). A Roost version with ``backend: triton`` pointing at a Triton
server that loads this repository calls the same model by the same name.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from registry import (
    InvalidRequest,
    NotFound,
    Registry,
    RoostError,
    ServingConfig,
    Signature,
    TensorSpec,
)

# Open Inference Protocol datatype -> Triton model configuration DataType.
OIP_TO_TRITON: dict[str, str] = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BF16": "TYPE_BF16",
    "BYTES": "TYPE_STRING",
}


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'


def _list(values: list[int] | tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]" if values else "[ ]"


def _tensor_block(kind: str, spec: TensorSpec, batched: bool) -> list[str]:
    if spec.datatype not in OIP_TO_TRITON:
        raise InvalidRequest(f"{kind} '{spec.name}': datatype {spec.datatype} has no Triton type")
    dims = spec.shape
    if batched:
        if not dims or dims[0] != -1:
            raise InvalidRequest(
                f"{kind} '{spec.name}' has shape {list(dims)}, without a dynamic first (batch) "
                "dimension: Triton cannot batch it; set max_batch_size: 0 for this version"
            )
        dims = dims[1:]  # Triton's dims leave out the batch dimension
    lines = [
        "  {",
        f"    name: {_quote(spec.name)}",
        f"    data_type: {OIP_TO_TRITON[spec.datatype]}",
    ]
    if dims:
        lines.append(f"    dims: {_list(dims)}")
    else:  # a tensor of shape [batch] (or a scalar): Triton wants dims [1] reshaped to []
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    lines.append("  }")
    return lines


def _tensors(kind: str, specs: tuple[TensorSpec, ...], batched: bool) -> list[str]:
    lines = [f"{kind} ["]
    for i, spec in enumerate(specs):
        block = _tensor_block(kind, spec, batched)
        if i < len(specs) - 1:
            block[-1] += ","
        lines += block
    lines.append("]")
    return lines


def triton_config(
    name: str, signature: Signature, config: ServingConfig, *, gpu: bool = False
) -> str:
    """The ``config.pbtxt`` text of an ONNX model served by Triton's onnxruntime backend.

    ``max_batch_size > 0`` turns on Triton's dynamic batcher with the version's delay,
    preferred sizes and queue policy (timeouts rejected, as Roost answers 504), and drops the
    batch dimension from every tensor's dims as Triton expects.
    """
    batched = config.max_batch_size > 0
    lines = [
        f"name: {_quote(name)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {config.max_batch_size}",
    ]
    lines += _tensors("input", signature.inputs, batched)
    lines += _tensors("output", signature.outputs, batched)
    if batched:
        lines.append("dynamic_batching {")
        if config.preferred_batch_sizes:
            lines.append(f"  preferred_batch_size: {_list(config.preferred_batch_sizes)}")
        lines += [
            f"  max_queue_delay_microseconds: {round(config.max_queue_delay_ms * 1000)}",
            "  default_queue_policy {",
            "    timeout_action: REJECT",
            f"    default_timeout_microseconds: {round(config.queue_timeout_ms * 1000)}",
            "    allow_timeout_override: true",
            f"    max_queue_size: {config.max_queue_size}",
            "  }",
            "}",
        ]
    lines += [
        "instance_group [",
        "  {",
        f"    count: {config.instances}",
        f"    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}",
        "  }",
        "]",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TritonExport:
    """What :func:`export_triton_model` wrote."""

    model: str
    version: int
    model_dir: Path
    config_path: Path
    artifact_path: Path


def _write(path: Path, data: bytes) -> None:
    """Write through a temporary file and a rename: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would keep a Triton running as another user out
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_triton_model(
    registry: Registry,
    model: str,
    out: Path,
    *,
    version: int | None = None,
    gpu: bool = False,
) -> TritonExport:
    """Write ``out/<model>/config.pbtxt`` and ``out/<model>/<version>/model.onnx``.

    ``version`` defaults to the model's production version. Other version folders already in
    ``out/<model>`` are left alone (Triton serves the latest one by default).
    """
    if version is None:
        registry.list_versions(model)  # NotFound for an unknown model
        deployment = registry.get_deployment(model)
        if deployment is None or deployment.production_version is None:
            raise NotFound(
                f"model '{model}' has no production version; choose one with --version"
            )
        version = deployment.production_version
    info = registry.get_version(model, version)
    config = ServingConfig.from_config(info.config)
    text = triton_config(model, info.signature, config, gpu=gpu)
    data = registry.load_artifact(model, version)  # sha256-verified
    model_dir = out / model
    version_dir = model_dir / str(version)
    artifact_path = version_dir / "model.onnx"
    config_path = model_dir / "config.pbtxt"
    try:
        version_dir.mkdir(parents=True, exist_ok=True)
        _write(artifact_path, data)
        _write(config_path, text.encode())
    except OSError as exc:
        raise RoostError(f"cannot write the Triton model repository under {out}: {exc}") from None
    return TritonExport(model, version, model_dir, config_path, artifact_path)
