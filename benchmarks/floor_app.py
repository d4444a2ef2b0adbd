"""The floor: a bare FastAPI endpoint calling one ONNX Runtime session, nothing else.

What Roost's REST path is compared against: the same model in one ``onnxruntime`` session
(1 intra-op thread, like Roost), ``POST /v2/models/<name>/infer`` parses the Open Inference
Protocol JSON with orjson, runs the session and returns an OIP JSON response. No logging, no
validation beyond what it takes to build the input arrays, no routing, no request ids.

Run it (``benchmarks/run.py`` does) with the same uvicorn settings as ``roost serve``: loop and
HTTP implementation on ``auto`` (uvloop and httptools when installed), access log off::

    FLOOR_MODEL_PATH=model.onnx .venv/bin/python -m uvicorn --factory --app-dir benchmarks \\
        floor_app:create_app --port 8100 --log-level warning --no-access-log

``handle`` is the whole per-request work minus HTTP; ``run.py`` also times it in-process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

MODEL_PATH_ENV = "FLOOR_MODEL_PATH"
MODEL_NAME_ENV = "FLOOR_MODEL_NAME"

OIP_TO_NUMPY: dict[str, Any] = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
NUMPY_TO_OIP: dict[Any, str] = {np.dtype(v): k for k, v in OIP_TO_NUMPY.items()}


def make_session(model: str | bytes) -> ort.InferenceSession:
    """One CPU session configured like Roost's backend: 1 intra-op thread, sequential."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def make_handler(session: ort.InferenceSession, model_name: str) -> Callable[[bytes], bytes]:
    """``handle(request body) -> response body``: orjson parse, session.run, orjson dump."""
    output_names = [o.name for o in session.get_outputs()]

    def handle(body: bytes) -> bytes:
        request = orjson.loads(body)
        feeds = {
            t["name"]: np.asarray(t["data"], dtype=OIP_TO_NUMPY[t["datatype"]]).reshape(t["shape"])
            for t in request["inputs"]
        }
        results = session.run(output_names, feeds)
        outputs = [
            {
                "name": name,
                "datatype": NUMPY_TO_OIP[array.dtype],
                "shape": list(array.shape),
                "data": array.ravel(),
            }
            for name, array in zip(output_names, results, strict=True)
        ]
        response = {"model_name": model_name, "model_version": "1", "outputs": outputs}
        return orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)

    return handle


def create_app() -> FastAPI:
    """The floor app for the model at ``$FLOOR_MODEL_PATH`` (uvicorn ``--factory``)."""
    model_name = os.environ.get(MODEL_NAME_ENV, "breast-cancer")
    handle = make_handler(make_session(os.environ[MODEL_PATH_ENV]), model_name)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    @app.post(f"/v2/models/{model_name}/infer")
    async def infer(request: Request) -> Response:
        return Response(handle(await request.body()), media_type="application/json")

    return app
