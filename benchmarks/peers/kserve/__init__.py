"""KServe's Python model server (``kserve`` 0.21.0) serving the benchmark's ONNX file.

It runs ``onnx_model.py`` (next to this file) with the Python of its own virtualenv
(:func:`peers.venvs.ensure_venv`): one worker, REST and gRPC, logging unconfigured (no access
log) and per-request latency logging off. :func:`start_kserve` returns a started, ready
:class:`harness.Target`; :func:`kserve_target` raises :class:`peers.venvs.VenvError` when the
package does not install (the caller records why and goes on without it).
"""

from __future__ import annotations

from pathlib import Path

from harness import MODEL, Target, free_port, start, wait_ready

from peers.venvs import ensure_venv

VERSION = "0.21.0"
REQUIREMENTS = [f"kserve=={VERSION}", "onnxruntime"]
SERVER = Path(__file__).resolve().parent / "onnx_model.py"


def kserve_target(model_path: Path, *, model: str = MODEL, workers: int = 1) -> Target:
    """A not yet started :class:`Target` for KServe on free loopback ports."""
    python = ensure_venv("kserve-" + VERSION, REQUIREMENTS) / "python"
    http_port, grpc_port = free_port(), free_port()
    return Target(
        name="kserve",
        description=f"KServe {VERSION} Python model server, ONNX model class "
                    "benchmarks/peers/kserve/onnx_model.py",
        argv=[
            str(python), str(SERVER), "--model_name", model, "--model_path", str(model_path),
            "--http_port", str(http_port), "--grpc_port", str(grpc_port),
            "--workers", str(workers), "--configure_logging", "false",
            "--enable_latency_logging", "false",
        ],
        env={},
        port=http_port,
        workers=workers,
        grpc_port=grpc_port,
        infer_path=f"/v2/models/{model}/infer",
    )


def start_kserve(model_path: Path, workdir: Path, *, model: str = MODEL,
                 timeout_s: float = 180) -> Target:
    """Start KServe for ``model_path`` (log in ``workdir``) and wait until it is ready."""
    target = kserve_target(model_path, model=model)
    start(target, workdir)
    wait_ready(target, timeout_s)
    return target
