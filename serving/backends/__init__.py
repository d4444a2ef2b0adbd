"""Model backends: what actually runs a version's artifact."""

from serving.backends.onnx import OnnxBackend, synthesize_inputs, warmup_inputs

__all__ = ["OnnxBackend", "synthesize_inputs", "warmup_inputs"]
