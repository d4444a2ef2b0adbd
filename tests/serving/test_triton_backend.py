"""A version served by a remote Open Inference Protocol v2 server (``backend: triton``).

The remote is a second real Roost gateway on loopback: it speaks the protocol tritonclient
speaks to Triton. Gateway B serves ``m`` in-process; gateway A's registry holds the same ONNX
bytes for ``m`` with ``backend: triton`` pointing at B.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import roost_testing
from roost_testing import deploy_model, free_port, make_linear_onnx, running_gateway
from tritonclient.utils import InferenceServerException

from registry import (
    DeadlineExceeded,
    InvalidRequest,
    Registry,
    RoostError,
    RoostSettings,
    ServiceUnavailable,
    ServingConfig,
)
from serving.backends import TritonBackend
from serving.repository import ModelRepository

MODEL = make_linear_onnx(seed=3)


def reference(x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    label, proba = session.run(None, {"input": x})
    return {"label": label, "probabilities": proba}


def body(x: np.ndarray) -> dict[str, Any]:
    tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
    return {"inputs": [{**tensor, "data": x.ravel().tolist()}]}


def check_response(resp: httpx.Response, x: np.ndarray) -> None:
    assert resp.status_code == 200, resp.text
    outputs = {o["name"]: o for o in resp.json()["outputs"]}
    expected = reference(x)
    label = np.asarray(outputs["label"]["data"]).reshape(outputs["label"]["shape"])
    proba = np.asarray(outputs["probabilities"]["data"], dtype=np.float32).reshape(
        outputs["probabilities"]["shape"]
    )
    np.testing.assert_array_equal(label, expected["label"])
    np.testing.assert_allclose(proba, expected["probabilities"], rtol=1e-6)


def host_port(url: str) -> str:
    return url.removeprefix("http://")


@pytest.fixture
def remote_settings(tmp_path: Path) -> RoostSettings:
    """Gateway B: its own ROOST_HOME, serving ``m`` in-process."""
    settings = RoostSettings(home=tmp_path / "remote", poll_interval_s=0.1)
    registry = Registry.from_settings(settings)
    deploy_model(registry, "m", MODEL)
    registry.close()
    return settings


@contextlib.contextmanager
def gateway_on_port(settings: RoostSettings, port: int) -> Iterator[str]:
    """:func:`running_gateway` on a given port (so that a stopped gateway can come back)."""
    with contextlib.ExitStack() as stack:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(roost_testing, "free_port", lambda: port)
            url = stack.enter_context(running_gateway(settings))
        yield url


def fast(settings: RoostSettings) -> RoostSettings:
    return settings.model_copy(update={"poll_interval_s": 0.1, "log_flush_interval_s": 0.2})


# -- configuration ---------------------------------------------------------------------------


def test_backend_knobs_are_checked_and_named() -> None:
    config = ServingConfig.from_config({"backend": "triton", "triton_url": "localhost:8001"})
    assert (config.triton_protocol, config.triton_model, config.triton_model_version) == (
        "http", None, "",
    )
    assert config.triton_timeout_s == 10
    assert ServingConfig().backend == "onnxruntime"
    assert ServingConfig.from_config({"triton_model_version": 2}).triton_model_version == "2"
    assert ServingConfig.from_config({"triton_url": "[::1]:80"}).triton_url == "[::1]:80"
    bad = [
        ({"backend": "tensorflow"}, "backend: expected one of onnxruntime, triton"),
        ({"backend": "triton"}, "triton_url: required when backend is triton"),
        ({"triton_url": "http://b:8000"}, "triton_url: expected host:port without a scheme"),
        ({"triton_url": "b"}, "triton_url: expected host:port, got 'b'"),
        ({"triton_url": "b:99999"}, "triton_url: port must be 1 to 65535"),
        ({"triton_url": 8000}, "triton_url: expected a string"),
        ({"triton_protocol": "tcp"}, "triton_protocol: expected http or grpc"),
        ({"triton_model": " "}, "triton_model: expected a non-empty model name"),
        ({"triton_model_version": "latest"}, "triton_model_version: expected a version"),
        ({"triton_timeout_s": 0}, "triton_timeout_s: expected > 0"),
        ({"triton_timeout_s": "10"}, "triton_timeout_s: expected a number"),
    ]
    for config_dict, message in bad:
        with pytest.raises(InvalidRequest, match=message.replace("[", r"\[")):
            ServingConfig.from_config(config_dict)


def test_registry_refuses_a_triton_version_without_url(registry: Registry) -> None:
    with pytest.raises(InvalidRequest, match="triton_url: required"):
        registry.register_version("m", MODEL, config={"backend": "triton"})


def test_remote_errors_become_roost_errors() -> None:
    info_signature = _signature()
    http = TritonBackend("m", info_signature, _config("b:1"))
    grpc_backend = TritonBackend("m", info_signature, _config("b:1", protocol="grpc"))

    def translated(backend: TritonBackend, msg: str, status: str | None) -> RoostError:
        return backend._translate(InferenceServerException(msg=msg, status=status))

    error = translated(http, "input 'input': expected shape [-1, 4]", "400")
    assert type(error) is InvalidRequest
    assert error.message == (
        "triton at b:1 (model 'm') rejected the request: input 'input': expected shape [-1, 4]"
    )
    assert type(translated(http, "unknown model 'm'", "404")) is ServiceUnavailable
    assert type(translated(http, "busy", "503")) is ServiceUnavailable
    assert type(translated(http, "slow", "504")) is DeadlineExceeded
    assert type(translated(http, "boom", "500")) is RoostError
    assert type(translated(grpc_backend, "bad", "StatusCode.INVALID_ARGUMENT")) is InvalidRequest
    assert type(translated(grpc_backend, "down", "StatusCode.UNAVAILABLE")) is ServiceUnavailable
    assert type(translated(grpc_backend, "t", "StatusCode.DEADLINE_EXCEEDED")) is DeadlineExceeded
    refused = http._translate(ConnectionRefusedError(111, "Connection refused"))
    assert type(refused) is ServiceUnavailable and "triton at b:1" in refused.message
    assert type(http._translate(TimeoutError())) is DeadlineExceeded


def _signature() -> Any:
    from registry.signature import signature_from_onnx

    return signature_from_onnx(MODEL)


def _config(url: str, protocol: str = "http") -> ServingConfig:
    return ServingConfig.from_config(
        {"backend": "triton", "triton_url": url, "triton_protocol": protocol}
    )


# -- against a second Roost gateway ----------------------------------------------------------


def test_remote_gateway_answers_like_onnxruntime_in_process(
    settings: RoostSettings, registry: Registry, remote_settings: RoostSettings
) -> None:
    rng = np.random.default_rng(7)
    with running_gateway(remote_settings) as remote:
        deploy_model(
            registry, "m", MODEL,
            config={
                "backend": "triton", "triton_url": host_port(remote),
                "max_queue_delay_ms": 20,
            },
        )
        with running_gateway(fast(settings)) as url, httpx.Client(base_url=url) as client:
            assert client.get("/v2/health/ready").status_code == 200
            meta = client.get("/v2/models/m").json()
            assert meta["platform"] == "triton"
            for rows in (1, 5):
                x = rng.normal(size=(rows, 4)).astype(np.float32)
                check_response(client.post("/v2/models/m/infer", json=body(x)), x)

            xs = [rng.normal(size=(1 + i % 3, 4)).astype(np.float32) for i in range(20)]
            remote_batches_before = _batches(remote)

            async def concurrently() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=url, timeout=30) as aclient:
                    return list(
                        await asyncio.gather(
                            *(aclient.post("/v2/models/m/infer", json=body(x)) for x in xs)
                        )
                    )

            for resp, x in zip(asyncio.run(concurrently()), xs, strict=True):
                check_response(resp, x)
            # A's batcher merged the concurrent requests: B saw fewer, larger calls.
            assert _batches(remote) - remote_batches_before < len(xs)


def _batches(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("roost_batch_size_count{") and 'model="m"' in line
    )


def test_remote_down_is_a_clean_503_naming_it_and_service_recovers(
    settings: RoostSettings, registry: Registry, remote_settings: RoostSettings
) -> None:
    x = np.ones((2, 4), dtype=np.float32)
    port = free_port()
    target = f"127.0.0.1:{port}"
    unreachable = f"triton at {target} (model 'm') is unreachable"
    with contextlib.ExitStack() as remote_running:
        remote_running.enter_context(gateway_on_port(remote_settings, port))
        deploy_model(registry, "m", MODEL, config={"backend": "triton", "triton_url": target})
        with running_gateway(fast(settings)) as url, httpx.Client(base_url=url) as client:
            check_response(client.post("/v2/models/m/infer", json=body(x)), x)

            remote_running.close()  # B goes away; A keeps running
            for _ in range(3):
                resp = client.post("/v2/models/m/infer", json=body(x))
                assert resp.status_code == 503, resp.text
                assert resp.json()["error"].startswith(unreachable)

            with gateway_on_port(remote_settings, port):  # B is back on the same port
                check_response(client.post("/v2/models/m/infer", json=body(x)), x)


def test_remote_unreachable_at_load_fails_the_version_with_a_reason(
    settings: RoostSettings, registry: Registry
) -> None:
    target = f"127.0.0.1:{free_port()}"  # nothing listens there
    deploy_model(registry, "m", MODEL, config={"backend": "triton", "triton_url": target})
    with running_gateway(fast(settings)) as url:
        ready = httpx.get(f"{url}/v2/health/ready")
        assert ready.status_code == 503
        (reason,) = ready.json()["reasons"]
        assert reason.startswith(f"m v1: triton at {target} (model 'm') is unreachable")
        resp = httpx.post(f"{url}/v2/models/m/infer", json=body(np.ones((1, 4), np.float32)))
        assert resp.status_code == 503 and target in resp.json()["error"]


def test_remote_that_rejects_the_warm_up_fails_the_version_with_its_message(
    settings: RoostSettings, registry: Registry, remote_settings: RoostSettings
) -> None:
    other = make_linear_onnx(n_features=3, seed=3)  # same names and types, other width
    with running_gateway(remote_settings) as remote:
        deploy_model(
            registry, "m", other, config={"backend": "triton", "triton_url": host_port(remote)}
        )
        repository = ModelRepository(registry, settings)
        asyncio.run(repository.sync(force=True))
        ok, reasons = repository.readiness()
        assert not ok
        assert reasons == [
            f"m v1: triton at {host_port(remote)} (model 'm') rejected the request: input "
            "'input': expected shape [-1, 4], got [1, 3]"
        ]


def test_unknown_remote_model_is_named(
    settings: RoostSettings, registry: Registry, remote_settings: RoostSettings
) -> None:
    with running_gateway(remote_settings) as remote:
        deploy_model(
            registry, "m", MODEL,
            config={
                "backend": "triton", "triton_url": host_port(remote), "triton_model": "nope",
            },
        )
        repository = ModelRepository(registry, settings)
        asyncio.run(repository.sync(force=True))
        assert repository.readiness() == (
            False,
            [
                f"m v1: triton at {host_port(remote)} (model 'nope'): the model is not ready "
                "on the server"
            ],
        )


def test_retired_versions_close_their_clients(
    settings: RoostSettings, registry: Registry, remote_settings: RoostSettings
) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    with running_gateway(remote_settings) as remote:
        config = {"backend": "triton", "triton_url": host_port(remote), "instances": 2}
        deploy_model(registry, "m", MODEL, config=config)

        async def scenario() -> None:
            repository = ModelRepository(registry, settings)
            repository.retire_grace_s = 0
            await repository.sync(force=True)
            first = repository.resolve("m", None)
            assert len(first.backends) == 2
            out = await first.batcher.submit({"input": x})
            np.testing.assert_array_equal(out["label"], reference(x)["label"])
            assert any(b._client is not None for b in _triton(first.backends))
            registry.set_config("m", 1, {"max_queue_delay_ms": 1})
            assert await repository.sync()
            second = repository.resolve("m", None)
            assert second is not first
            await asyncio.gather(*repository._retiring)
            assert all(b._client is None and b._closed for b in _triton(first.backends))
            await second.batcher.submit({"input": x})
            await repository.close()
            assert all(b._client is None for b in _triton(second.backends))

        asyncio.run(scenario())


def _triton(backends: tuple[Any, ...]) -> list[TritonBackend]:
    assert all(isinstance(b, TritonBackend) for b in backends)
    return list(backends)


# -- gRPC --------------------------------------------------------------------------------------


def test_grpc_protocol(
    settings: RoostSettings, registry: Registry, remote_settings: RoostSettings
) -> None:
    rng = np.random.default_rng(3)
    with contextlib.ExitStack() as remote_running:
        remote = remote_running.enter_context(running_gateway(remote_settings, grpc=True))
        target = remote.grpc_address
        assert target is not None
        deploy_model(
            registry, "m", MODEL,
            config={
                "backend": "triton", "triton_url": target, "triton_protocol": "grpc",
                "max_batch_size": 64,  # more than B takes (32): B's refusal reaches the client
            },
        )
        with running_gateway(fast(settings)) as url, httpx.Client(base_url=url) as client:
            assert client.get("/v2/health/ready").status_code == 200
            for rows in (1, 5):
                x = rng.normal(size=(rows, 4)).astype(np.float32)
                check_response(client.post("/v2/models/m/infer", json=body(x)), x)
            resp = client.post("/v2/models/m/infer", json=body(np.zeros((40, 4), np.float32)))
            assert resp.status_code == 400
            assert resp.json()["error"] == (
                f"triton at {target} (model 'm') rejected the request: batch of 40 rows "
                "exceeds max_batch_size 32"
            )
            remote_running.close()  # B goes away
            resp = client.post("/v2/models/m/infer", json=body(np.ones((1, 4), np.float32)))
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"].startswith(f"triton at {target} (model 'm') is unreachable")
