"""The peers Roost is measured against, each in its own virtualenv (``benchmarks/peers.py``).

- :mod:`peers.venvs`: creates and caches a peer's virtualenv (``pip install`` through the
  machine's ordinary index), outside the repository;
- :mod:`peers.mlserver`: MLServer 1.7.1 with a small ONNX runtime (``onnx_runtime.py``),
  ``parallel_workers: 0``, REST and gRPC: :func:`peers.mlserver.start_mlserver`;
- :mod:`peers.kserve`: KServe's Python model server with a small ONNX model class.

Import with ``benchmarks/`` on ``sys.path`` (as every benchmark script does): the starters
return :class:`harness.Target` objects, so the same wrk and gRPC drivers load every server.
"""

from peers.mlserver import start_mlserver

__all__ = ["start_mlserver"]
