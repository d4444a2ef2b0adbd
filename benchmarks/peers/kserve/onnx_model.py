"""KServe's Python model server for one ONNX file (run with KServe's own virtualenv's Python).

    python onnx_model.py --model_name breast-cancer --model_path model.onnx \\
        --http_port 8080 --grpc_port 8081 --configure_logging false \\
        --enable_latency_logging false

The session is configured like Roost's backend and the floor: one intra-op thread, sequential,
CPU provider. ``predict`` takes the Open Inference Protocol request KServe decoded (REST JSON
``/v2/models/<name>/infer`` or gRPC ``ModelInfer``), runs the session and answers with every
output, raw over gRPC and as JSON lists over REST. Logging is left unconfigured (uvicorn's
access log then stays below the root logger's WARNING level) and per-request latency logging
off, as Roost's access log is off.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server
from kserve.utils.utils import from_np_dtype


class OnnxModel(Model):  # type: ignore[misc]
    """One ``onnxruntime.InferenceSession``, called on the server's event loop."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return True

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        results = self.session.run(self.output_names, feeds)
        outputs = []
        for name, array in zip(self.output_names, results, strict=True):
            array = np.asarray(array)
            output = InferOutput(name, list(array.shape), from_np_dtype(array.dtype))
            output.set_data_from_numpy(array, binary_data=bool(payload.from_grpc))
            outputs.append(output)
        return InferResponse(
            response_id=payload.id or "", model_name=self.name, infer_outputs=outputs,
            from_grpc=payload.from_grpc,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_path", required=True)
    args, _ = parser.parse_known_args()
    ModelServer().start([OnnxModel(args.model_name, args.model_path)])
