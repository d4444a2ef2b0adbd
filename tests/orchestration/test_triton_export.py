"""``roost triton export``: a registry version as a Triton model repository entry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from roost_testing import deploy_model, make_echo_onnx, make_linear_onnx
from tritonclient.grpc import model_config_pb2

from orchestration.triton_export import export_triton_model, triton_config
from registry import InvalidRequest, Registry, RoostSettings, ServingConfig
from registry.artifacts import sha256_bytes
from registry.signature import Signature, TensorSpec, signature_from_onnx

LINEAR_PBTXT = """\
name: "linear"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  {
    name: "label"
    data_type: TYPE_INT64
    dims: [ 1 ]
    reshape: { shape: [ ] }
  },
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 2 ]
  }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 2500
  default_queue_policy {
    timeout_action: REJECT
    default_timeout_microseconds: 100000
    allow_timeout_override: true
    max_queue_size: 64
  }
}
instance_group [
  {
    count: 2
    kind: KIND_CPU
  }
]
"""


def parse(text: str) -> model_config_pb2.ModelConfig:
    """Triton's own ModelConfig message (shipped in tritonclient) must accept the text."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_config_pbtxt_of_the_linear_model() -> None:
    config = ServingConfig.from_config(
        {
            "max_batch_size": 16, "max_queue_delay_ms": 2.5, "preferred_batch_sizes": [8, 4],
            "max_queue_size": 64, "queue_timeout_ms": 100, "instances": 2,
        }
    )
    text = triton_config("linear", signature_from_onnx(make_linear_onnx()), config)
    assert text == LINEAR_PBTXT
    parsed = parse(text)
    assert parsed.platform == "onnxruntime_onnx" and parsed.max_batch_size == 16
    assert [(t.name, list(t.dims)) for t in parsed.input] == [("input", [4])]
    label, proba = parsed.output
    assert list(label.dims) == [1] and list(label.reshape.shape) == []
    assert label.data_type == model_config_pb2.TYPE_INT64
    assert list(proba.dims) == [2]
    assert list(parsed.dynamic_batching.preferred_batch_size) == [4, 8]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 2500
    policy = parsed.dynamic_batching.default_queue_policy
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    assert (policy.default_timeout_microseconds, policy.max_queue_size) == (100000, 64)
    assert parsed.instance_group[0].count == 2
    assert parsed.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_every_datatype_without_batching_on_gpu() -> None:
    signature = signature_from_onnx(make_echo_onnx())
    text = triton_config("echo", signature, ServingConfig(max_batch_size=0), gpu=True)
    parsed = parse(text)
    assert parsed.max_batch_size == 0
    assert not parsed.HasField("dynamic_batching") and "dynamic_batching" not in text
    assert parsed.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    types = {t.name: model_config_pb2.DataType.Name(t.data_type) for t in parsed.input}
    assert types == {
        "in_BOOL": "TYPE_BOOL", "in_INT8": "TYPE_INT8", "in_INT16": "TYPE_INT16",
        "in_INT32": "TYPE_INT32", "in_INT64": "TYPE_INT64", "in_UINT8": "TYPE_UINT8",
        "in_UINT16": "TYPE_UINT16", "in_UINT32": "TYPE_UINT32", "in_UINT64": "TYPE_UINT64",
        "in_FP16": "TYPE_FP16", "in_FP32": "TYPE_FP32", "in_FP64": "TYPE_FP64",
        "in_BYTES": "TYPE_STRING",
    }
    assert {tuple(t.dims) for t in [*parsed.input, *parsed.output]} == {(-1, 2)}


def test_batching_needs_a_dynamic_first_dimension() -> None:
    fixed = Signature(
        inputs=(TensorSpec("x", "FP32", (1, 3)),), outputs=(TensorSpec("y", "FP32", (-1,)),)
    )
    with pytest.raises(InvalidRequest, match=r"input 'x' has shape \[1, 3\].*max_batch_size: 0"):
        triton_config("fixed", fixed, ServingConfig())
    text = triton_config("fixed", fixed, ServingConfig(max_batch_size=0))
    assert [list(t.dims) for t in parse(text).input] == [[1, 3]]
    odd = Signature(inputs=(TensorSpec('a "quoted"\\name', "FP32", (-1,)),), outputs=())
    assert parse(triton_config("odd", odd, ServingConfig())).input[0].name == 'a "quoted"\\name'


def test_export_writes_the_verified_artifact_of_the_production_version(
    registry: Registry, tmp_path: Path
) -> None:
    v1_bytes, v2_bytes = make_linear_onnx(seed=1), make_linear_onnx(seed=2)
    deploy_model(registry, "m", v1_bytes, config={"max_batch_size": 8, "instances": 3})
    registry.register_version("m", v2_bytes)
    out = tmp_path / "triton-repo"

    done = export_triton_model(registry, "m", out)
    assert done.version == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "m", "m/1", "m/1/model.onnx", "m/config.pbtxt",
    ]
    assert (out / "m" / "1" / "model.onnx").read_bytes() == v1_bytes
    parsed = parse((out / "m" / "config.pbtxt").read_text())
    assert (parsed.name, parsed.max_batch_size, parsed.instance_group[0].count) == ("m", 8, 3)
    assert oct((out / "m" / "1" / "model.onnx").stat().st_mode & 0o777) == "0o644"

    done = export_triton_model(registry, "m", out, version=2)
    assert done.artifact_path == out / "m" / "2" / "model.onnx"
    assert sha256_bytes(done.artifact_path.read_bytes()) == registry.get_version("m", 2).sha256
    assert (out / "m" / "1" / "model.onnx").exists()  # other versions stay


# -- the command line ---------------------------------------------------------------------------


def roost(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
    env["ROOST_HOME"] = str(home)
    return subprocess.run(
        [str(Path(sys.executable).parent / "roost"), *args],
        capture_output=True, text=True, env=env, cwd=home.parent, timeout=120,
    )


def clean_failure(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr and done.stdout == ""
    return done.stderr


def test_cli_export(tmp_path: Path) -> None:
    home = tmp_path / "roost"
    registry = Registry.from_settings(RoostSettings(home=home))
    data = make_linear_onnx(seed=4)
    deploy_model(registry, "m", data)
    draft = registry.register_version("m", make_linear_onnx(seed=5)).version
    registry.register_version("fresh", make_linear_onnx(seed=6))
    registry.close()
    out = tmp_path / "repo"

    done = roost(home, "triton", "export", "m", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"exported m version 1 to {out / 'm'}"
    assert (out / "m" / "1" / "model.onnx").read_bytes() == data
    assert parse((out / "m" / "config.pbtxt").read_text()).name == "m"

    gpu = roost(home, "triton", "export", "m", "--version", str(draft), "--out", str(out), "--gpu")
    assert gpu.returncode == 0, gpu.stderr
    assert "kind: KIND_GPU" in (out / "m" / "config.pbtxt").read_text()
    assert (out / "m" / str(draft) / "model.onnx").exists()

    assert clean_failure(roost(home, "triton", "export", "nope", "--out", str(out))) == (
        "error: unknown model 'nope'\n"
    )
    missing = roost(home, "triton", "export", "m", "--version", "9", "--out", str(out))
    assert clean_failure(missing) == "error: model 'm' has no version 9\n"
    assert "has no production version" in clean_failure(
        roost(home, "triton", "export", "fresh", "--out", str(out))
    )
    assert not (out / "nope").exists() and not (out / "fresh").exists()


def test_cli_refuses_a_corrupt_artifact(tmp_path: Path) -> None:
    home = tmp_path / "roost"
    registry = Registry.from_settings(RoostSettings(home=home))
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    path = registry.artifacts.path_for(registry.get_version("m", 1).sha256)
    registry.close()
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    out = tmp_path / "repo"
    assert "is corrupt" in clean_failure(roost(home, "triton", "export", "m", "--out", str(out)))
    assert not (out / "m").exists()
