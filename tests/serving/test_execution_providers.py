"""ONNX Runtime execution providers: CUDA where the gpu extra finds a GPU, CPU otherwise."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from roost_testing import make_mlp_onnx

from registry.signature import signature_from_onnx
from serving.backends import OnnxBackend
from serving.backends.onnx import execution_providers

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_auto_picks_what_this_machine_has() -> None:
    expected = "CUDAExecutionProvider" if HAS_CUDA else "CPUExecutionProvider"
    assert execution_providers("auto")[0] == expected
    assert execution_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="expected auto, cpu or cuda"):
        execution_providers("tpu")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_cuda_requested_without_a_gpu_fails_clearly() -> None:
    with pytest.raises(RuntimeError, match="install the gpu extra"):
        execution_providers("cuda")


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a GPU (make install-gpu)")
def test_cuda_backend_matches_cpu() -> None:
    data = make_mlp_onnx(n_features=16, hidden=512, layers=3)
    signature = signature_from_onnx(data)
    x = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    gpu = OnnxBackend(data, signature, provider="cuda")
    cpu = OnnxBackend(data, signature, provider="cpu")
    assert gpu.providers[0] == "CUDAExecutionProvider"
    np.testing.assert_allclose(
        gpu.infer({"input": x})["probabilities"],
        cpu.infer({"input": x})["probabilities"],
        rtol=1e-3,
        atol=1e-5,
    )
