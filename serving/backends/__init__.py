"""Model backends: what actually runs a version's artifact (see :class:`ModelBackend`)."""

from registry import RoostSettings, ServingConfig, VersionInfo
from serving.backends.base import ModelBackend, Tensors
from serving.backends.onnx import OnnxBackend, synthesize_inputs, warmup_inputs
from serving.backends.triton import TritonBackend
from serving.llm.backend import LLMBackend
from serving.llm.remote import OpenAIBackend

Backend = ModelBackend
"""A version's execution instance (kept as a short alias)."""

BACKENDS: dict[str, type[ModelBackend]] = {
    "onnxruntime": OnnxBackend,
    "triton": TritonBackend,
    "llm": LLMBackend,  # text generation in the gateway (serving/llm/)
    "openai": OpenAIBackend,  # an OpenAI-compatible upstream, e.g. vLLM
}
"""``ServingConfig.backend`` -> the implementation (mypy checks each satisfies the protocol)."""


def load_backends(
    info: VersionInfo, artifact: bytes, config: ServingConfig, settings: RoostSettings
) -> tuple[ModelBackend, ...]:
    """``config.instances`` new instances of the backend the version's config names."""
    kind = BACKENDS[config.backend]  # ServingConfig has validated the name
    return tuple(kind.load(info, artifact, config, settings) for _ in range(config.instances))


__all__ = [
    "BACKENDS",
    "Backend",
    "ModelBackend",
    "OnnxBackend",
    "Tensors",
    "TritonBackend",
    "load_backends",
    "synthesize_inputs",
    "warmup_inputs",
]
