"""Helpers of the load-shedding tests: raw HTTP/1.1 over a socket, metrics, a quiet gateway."""

from __future__ import annotations

import socket
from typing import Any

import orjson

ROW = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
BODY = orjson.dumps(ROW)
FAILING = {"warmup_runs": 0, "breaker_failures": 1, "breaker_reset_ms": 600_000}
"""A failing model's knobs: its breaker opens on the first failure and stays open."""


def quiet(settings: Any, **update: Any) -> Any:
    """``settings`` without gRPC, with short flush and poll intervals (and ``update``)."""
    return settings.model_copy(
        update={"grpc_port": 0, "log_flush_interval_s": 0.2, "poll_interval_s": 0.1, **update}
    )


def rejected(text: str, model: str, reason: str) -> float:
    """``roost_rejected_requests_total`` for ``model`` and ``reason`` in a /metrics text."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith("roost_rejected_requests_total{")
        and f'model="{model}"' in line and f'reason="{reason}"' in line
    )


def post(path: str, body: bytes, extra: str = "") -> bytes:
    """The head of a POST of ``body`` (sent separately) to ``path``."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode()


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """``count`` HTTP/1.1 responses with a Content-Length, in order: (status, lower-cased
    headers, body) each; pipelined answers may arrive in one read."""
    data, out = b"", []
    while len(out) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection"
            rest += chunk
        out.append((int(lines[0].split()[1]), headers, rest[:length]))
        data = rest[length:]
    assert not data, "more than the answers asked for"
    return out


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: (status, lower-cased headers, body)."""
    return read_responses(sock, 1)[0]
