"""Model backends: what actually runs a version's artifact."""

from serving.backends.onnx import OnnxBackend, synthesize_inputs, warmup_inputs
from serving.backends.triton import TritonBackend

Backend = OnnxBackend | TritonBackend
"""A version's execution instance: in-process ONNX Runtime or a remote Triton server."""

__all__ = ["Backend", "OnnxBackend", "TritonBackend", "synthesize_inputs", "warmup_inputs"]
