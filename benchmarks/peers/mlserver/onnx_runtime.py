"""A minimal MLServer runtime for one ONNX file (MLServer 1.7 has no ONNX runtime of its own).

Runs inside MLServer's own virtualenv (``mlserver start``), never in Roost's: it imports only
MLServer, NumPy and ONNX Runtime. It serves REST and gRPC through MLServer's data plane. The
session is configured like Roost's backend and the floor (``benchmarks/floor_app.py``): one
intra-op thread, sequential execution, CPU provider. ``model-settings.json`` names it
``"implementation": "onnx_runtime.OnnxRuntime"`` with ``parameters.uri`` pointing at the file.

Inputs are decoded with ``NumpyCodec`` (JSON ``data`` or gRPC ``raw_input_contents``) and fed by
name; every output comes back through ``NumpyCodec`` (MLServer answers gRPC with raw contents
when the request used them).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    """One ``onnxruntime.InferenceSession`` per model, called on the event loop."""

    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        uri = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        results = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, np.asarray(array))
                for name, array in zip(self._outputs, results, strict=True)
            ],
        )
