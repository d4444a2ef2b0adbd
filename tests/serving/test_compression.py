"""Compressed requests and responses at the HTTP edge, as Triton's HTTP endpoint does them:
``Content-Encoding: gzip``/``deflate`` bodies on every route (the body limit applies after
inflating: a zip bomb is refused without being inflated), ``Accept-Encoding`` on infer
responses of 1 KiB or more, 415 for other codings. Checked with tritonclient itself."""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from roost_testing import deploy_model, make_linear_onnx, running_gateway

from registry import Registry, RoostSettings

MAX_BYTES = 2 * 1024 * 1024
ROWS = 300  # a response well over the 1 KiB compression threshold


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home: Path = tmp_path_factory.mktemp("compression")
    settings = RoostSettings(
        home=home, poll_interval_s=0.2, log_flush_interval_s=0.2, max_request_bytes=MAX_BYTES
    )
    reg = Registry.from_settings(settings)
    deploy_model(
        reg, "linear", make_linear_onnx(seed=1), feature_names=["a", "b", "c", "d"],
        config={"max_batch_size": 512},
    )
    reg.close()
    with running_gateway(settings) as url:
        yield url


def rows(n: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.arange(n * 4, dtype=np.float32).reshape(n, 4) / 7


def infer_body(n: int) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [n, 4],
                     "data": rows(n).ravel().tolist()}]}
    )


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_compressed_requests_and_responses(gateway: str, binary: bool) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=gateway.removeprefix("http://"))
    try:
        inp = httpclient.InferInput("input", [ROWS, 4], "FP32")
        inp.set_data_from_numpy(rows(ROWS), binary_data=binary)
        out = [httpclient.InferRequestedOutput("label", binary_data=binary)]
        plain = client.infer("linear", [inp], outputs=out).as_numpy("label")
        assert plain is not None and plain.shape == (ROWS,)
        for request in ("gzip", "deflate", None):
            for response in ("gzip", "deflate", None):
                result = client.infer(
                    "linear", [inp], outputs=out,
                    request_compression_algorithm=request,
                    response_compression_algorithm=response,
                )
                np.testing.assert_array_equal(result.as_numpy("label"), plain)
    finally:
        client.close()


def test_infer_responses_are_compressed_when_accepted_and_large(gateway: str) -> None:
    with httpx.Client(base_url=gateway, timeout=10) as client:
        big = client.post(
            "/v2/models/linear/infer", content=gzip.compress(infer_body(ROWS)),
            headers={"content-encoding": "gzip", "accept-encoding": "gzip"},
        )
        assert big.status_code == 200, big.text
        assert big.headers["content-encoding"] == "gzip"
        assert int(big.headers["content-length"]) < len(big.content)  # httpx inflated it
        assert len(big.json()["outputs"][0]["data"]) == ROWS
        deflated = client.post(
            "/v2/models/linear/infer", content=infer_body(ROWS),
            headers={"accept-encoding": "deflate"},
        )
        assert deflated.headers["content-encoding"] == "deflate"
        refused = client.post(
            "/v2/models/linear/infer", content=infer_body(ROWS),
            headers={"accept-encoding": "gzip;q=0, identity"},
        )
        assert "content-encoding" not in refused.headers
        # a single row: never compressed
        small = client.post(
            "/v2/models/linear/infer", content=infer_body(1), headers={"accept-encoding": "gzip"}
        )
        assert small.status_code == 200 and "content-encoding" not in small.headers
        # KServe v1 too (through FastAPI)
        v1 = client.post(
            "/v1/models/linear:predict",
            content=zlib.compress(orjson.dumps({"instances": rows(ROWS).tolist()})),
            headers={"content-encoding": "deflate", "accept-encoding": "gzip"},
        )
        assert v1.status_code == 200, v1.text
        assert v1.headers["content-encoding"] == "gzip" and len(v1.json()["predictions"]) == ROWS


def _bomb(gigabytes: float = 1.0) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip
    zeros = bytes(16 * 1024 * 1024)
    parts = [packer.compress(zeros) for _ in range(int(gigabytes * 64))]
    return b"".join(parts) + packer.flush()


def test_zip_bomb_is_413_without_inflating_it(gateway: str) -> None:
    bomb = _bomb()
    assert len(bomb) < MAX_BYTES  # it passes the wire limit: only inflating shows its size
    with httpx.Client(base_url=gateway, timeout=30) as client:
        for path in ("/v2/models/linear/infer", "/v1/models/linear:predict", "/v1/feedback"):
            started = time.perf_counter()
            resp = client.post(
                path, content=bomb,
                headers={"content-encoding": "gzip", "content-type": "application/json"},
            )
            assert resp.status_code == 413, (path, resp.text)
            assert resp.json()["error"] == (
                f"request body exceeds the limit of {MAX_BYTES} bytes once decompressed; "
                "see max_request_bytes"
            )
            assert time.perf_counter() - started < 5, "inflated far past the limit"
        assert client.post("/v2/models/linear/infer", content=infer_body(1)).status_code == 200


def test_unknown_or_broken_encodings(gateway: str) -> None:
    with httpx.Client(base_url=gateway, timeout=10) as client:
        for path in ("/v2/models/linear/infer", "/v1/feedback"):
            resp = client.post(path, content=b"{}", headers={"content-encoding": "br"})
            assert resp.status_code == 415, resp.text
            assert resp.json()["error"] == (
                "Content-Encoding 'br' is not supported; send gzip, deflate or an uncompressed "
                "body"
            )
        identity = client.post(
            "/v2/models/linear/infer", content=infer_body(1),
            headers={"content-encoding": "identity"},
        )
        assert identity.status_code == 200
        garbage = client.post(
            "/v2/models/linear/infer", content=b"not gzip at all",
            headers={"content-encoding": "gzip"},
        )
        assert garbage.status_code == 400
        assert garbage.json()["error"].startswith("request body is not valid gzip data")
        truncated = client.post(
            "/v2/models/linear/infer", content=gzip.compress(infer_body(4))[:-12],
            headers={"content-encoding": "gzip"},
        )
        assert truncated.status_code == 400
        assert truncated.json()["error"] == "request body: the gzip data is truncated"
        feedback = client.post(
            "/v1/feedback", content=gzip.compress(b'{"request_id": "nope", "label": 1}'),
            headers={"content-encoding": "gzip", "content-type": "application/json"},
        )
        assert feedback.status_code == 404 and "'nope'" in feedback.json()["error"]
