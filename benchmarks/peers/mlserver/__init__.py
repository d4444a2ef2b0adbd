"""MLServer 1.7.1 serving the benchmark's ONNX file: :func:`start_mlserver`.

MLServer runs from its own virtualenv (:func:`peers.venvs.ensure_venv`, ``mlserver==1.7.1`` and
``onnxruntime``) with the runtime in ``onnx_runtime.py`` next to this file. Its settings are its
fastest configuration for this model, measured: ``parallel_workers: 0`` (inference on the
server's event loop, no worker processes; adaptive batching off, the default). ``debug: false``
turns its access log off, as Roost's and the floor's are. Metrics stay on (its default, on
their own port), as Roost's are. REST and gRPC (``ModelInfer``) both answer.

    from peers.mlserver import start_mlserver
    target = start_mlserver(model_path, workdir)        # started and ready
    ... run_wrk(target, ...) / run_grpc(target, ...) ...
    harness.stop(target)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from harness import MODEL, Target, free_port, start, wait_ready

from peers.venvs import ensure_venv

VERSION = "1.7.1"
REQUIREMENTS = [f"mlserver=={VERSION}", "onnxruntime"]
RUNTIME = Path(__file__).resolve().parent / "onnx_runtime.py"


def mlserver_bin() -> Path:
    """The ``bin/`` of MLServer's virtualenv (created on first use, a minute or so)."""
    return ensure_venv("mlserver-" + VERSION, REQUIREMENTS)


def write_model_folder(folder: Path, model_path: Path, model: str, http_port: int,
                       grpc_port: int, metrics_port: int) -> None:
    """``settings.json``, ``model-settings.json``, the runtime and the model, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RUNTIME, folder / RUNTIME.name)
    shutil.copyfile(model_path, folder / "model.onnx")
    settings = {
        "debug": False,
        "parallel_workers": 0,
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
    }
    model_settings = {
        "name": model,
        "implementation": "onnx_runtime.OnnxRuntime",
        "parameters": {"uri": "./model.onnx", "version": "1"},
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))


def mlserver_target(model_path: Path, workdir: Path, *, model: str = MODEL) -> Target:
    """A not yet started :class:`Target` for MLServer on free loopback ports."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    folder = workdir / "mlserver"
    write_model_folder(folder, model_path, model, http_port, grpc_port, metrics_port)
    return Target(
        name="mlserver",
        description=f"MLServer {VERSION}, parallel_workers 0, ONNX runtime "
                    "benchmarks/peers/mlserver/onnx_runtime.py",
        argv=[str(mlserver_bin() / "mlserver"), "start", str(folder)],
        env={},
        port=http_port,
        grpc_port=grpc_port,
        infer_path=f"/v2/models/{model}/infer",
    )


def start_mlserver(model_path: Path, workdir: Path, *, model: str = MODEL,
                   timeout_s: float = 180) -> Target:
    """Start MLServer for ``model_path`` (log in ``workdir``) and wait until it is ready."""
    target = mlserver_target(model_path, workdir, model=model)
    start(target, workdir)
    wait_ready(target, timeout_s)
    return target
