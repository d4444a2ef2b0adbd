"""ONNX Runtime in the gateway process."""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import onnxruntime as ort

from registry import RoostSettings, ServingConfig, VersionInfo
from registry.signature import OIP_TO_NUMPY, Signature


def synthesize_inputs(signature: Signature, rows: int = 1) -> dict[str, np.ndarray]:
    """Zero-valued inputs matching the signature (dynamic dimensions become ``rows``)."""
    feeds: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        shape = tuple(rows if d < 0 else d for d in spec.shape)
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(shape, "", dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=OIP_TO_NUMPY[spec.datatype])
    return feeds


def execution_providers(provider: str) -> list[str]:
    """ONNX Runtime providers for ``provider`` (auto | cpu | cuda).

    ``auto`` takes CUDA when the installed onnxruntime (the ``gpu`` extra) can use a GPU;
    ``cuda`` insists on it and fails clearly where there is none.
    """
    available = ort.get_available_providers()
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if provider == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                "execution_provider=cuda but onnxruntime offers only "
                + ", ".join(available)
                + " (install the gpu extra: make install-gpu)"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if provider != "auto":
        raise ValueError(f"execution_provider: expected auto, cpu or cuda, got {provider!r}")
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def warmup_inputs(info: VersionInfo) -> list[dict[str, np.ndarray]] | None:
    """Warm-up samples stored with the version (``config["warmup_inputs"]``), if any.

    The config holds a list of ``{input name: nested list}`` objects in signature dtypes.
    """
    stored = info.config.get("warmup_inputs")
    if not stored:
        return None
    samples = []
    for sample in stored:
        samples.append(
            {
                spec.name: np.asarray(sample[spec.name], dtype=OIP_TO_NUMPY[spec.datatype])
                for spec in info.signature.inputs
            }
        )
    return samples


class OnnxBackend:
    """One ONNX Runtime session for one model version."""

    platform = "onnxruntime_onnx"

    def __init__(
        self,
        model_bytes: bytes,
        signature: Signature,
        intra_op_threads: int = 1,
        provider: str = "auto",
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.signature = signature
        self._session = ort.InferenceSession(
            model_bytes, options, providers=execution_providers(provider)
        )
        self.providers: list[str] = list(self._session.get_providers())
        self._output_names = [o.name for o in self._session.get_outputs()]

    @classmethod
    def load(
        cls, info: VersionInfo, artifact: bytes, config: ServingConfig, settings: RoostSettings
    ) -> Self:
        """A session on ``artifact`` with the settings' threads and execution provider."""
        return cls(artifact, info.signature, settings.intra_op_threads, settings.execution_provider)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model; BYTES inputs are handed to ONNX Runtime as str objects."""
        prepared: dict[str, Any] = {}
        for name, array in feeds.items():
            if array.dtype == object:
                array = np.vectorize(
                    lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v,
                    otypes=[object],
                )(array)
            prepared[name] = array
        results = self._session.run(self._output_names, prepared)
        return dict(zip(self._output_names, results, strict=True))

    def warm_up(self, runs: int, samples: list[dict[str, np.ndarray]] | None = None) -> None:
        """Run every sample (default: zeros shaped like the signature) ``runs`` times."""
        for _ in range(runs):
            for feeds in samples or [synthesize_inputs(self.signature)]:
                self.infer(feeds)

    async def close(self) -> None:
        """Nothing beyond memory to release: the session goes with the last reference."""
