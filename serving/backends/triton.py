"""A remote Triton (or any Open Inference Protocol v2 server) through tritonclient's asyncio API.

The version's artifact is still sha256-checked by the gateway (the registry holds the same ONNX
file the remote serves), but it runs on the remote server: :meth:`TritonBackend.infer` is a
coroutine that the batcher awaits on the event loop, so a batch costs no gateway thread.

The serving client is created lazily, on the loop that runs the first inference (tritonclient's
asyncio clients belong to the loop they were made on). The warm-up runs in the repository's
loader thread, so it makes its own short-lived client on a loop of its own and closes it.
Errors from the remote are translated into Roost's errors (and so into HTTP statuses): an
unreachable server is a 503 naming its URL, a remote 4xx is a 400 carrying the remote message.
"""

from __future__ import annotations

import asyncio
from typing import Any, Self

import aiohttp
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpclient_aio
from tritonclient.utils import InferenceServerException

from registry.errors import DeadlineExceeded, InvalidRequest, RoostError, ServiceUnavailable
from registry.service import VersionInfo
from registry.serving_config import ServingConfig
from registry.settings import RoostSettings
from registry.signature import Signature
from serving.backends.onnx import synthesize_inputs

Tensors = dict[str, np.ndarray]

# gRPC status codes (as tritonclient reports them) -> the Roost error they become.
_GRPC_UNAVAILABLE = {"StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED"}
_GRPC_INVALID = {
    "StatusCode.INVALID_ARGUMENT",
    "StatusCode.OUT_OF_RANGE",
    "StatusCode.FAILED_PRECONDITION",
}


class TritonBackend:
    """One version served by a remote Open Inference Protocol v2 server."""

    platform = "triton"

    def __init__(self, model: str, signature: Signature, config: ServingConfig) -> None:
        if config.triton_url is None:
            raise InvalidRequest("triton_url: required when backend is triton (host:port)")
        self.signature = signature
        self.url = config.triton_url
        self.protocol = config.triton_protocol
        self.model = config.triton_model or model
        self.model_version = config.triton_model_version
        self.timeout_s = float(config.triton_timeout_s)
        self.providers = [f"triton-{self.protocol}://{self.url}"]
        self._client: Any = None
        self._closed = False

    @classmethod
    def load(
        cls, info: VersionInfo, artifact: bytes, config: ServingConfig, settings: RoostSettings
    ) -> Self:
        """The remote serves these same (sha256-checked) bytes; nothing runs here."""
        return cls(info.model, info.signature, config)

    @property
    def where(self) -> str:
        version = f" version {self.model_version}" if self.model_version else ""
        return f"triton at {self.url} (model '{self.model}'{version})"

    # -- clients -----------------------------------------------------------------------------

    def _new_client(self) -> Any:
        """A tritonclient asyncio client; must be made on the loop that will use it."""
        if self.protocol == "grpc":
            return grpcclient_aio.InferenceServerClient(url=self.url)
        return httpclient_aio.InferenceServerClient(url=self.url, conn_timeout=self.timeout_s)

    def _serving_client(self) -> Any:
        if self._closed:
            raise ServiceUnavailable(f"{self.where}: the backend was closed")
        if self._client is None:
            self._client = self._new_client()
        return self._client

    async def close(self) -> None:
        """Close the serving client (call on the loop that served requests)."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # -- inference ---------------------------------------------------------------------------

    async def infer(self, feeds: Tensors) -> Tensors:
        """Run one (batched) request on the remote server; outputs by name."""
        return await self._infer(self._serving_client(), feeds)

    async def _infer(self, client: Any, feeds: Tensors) -> Tensors:
        module: Any = grpcclient if self.protocol == "grpc" else httpclient
        inputs = []
        for spec in self.signature.inputs:
            array = feeds[spec.name]
            tensor = module.InferInput(spec.name, list(array.shape), spec.datatype)
            if self.protocol == "grpc":
                tensor.set_data_from_numpy(array)
            else:
                tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        if self.protocol == "grpc":
            outputs = [module.InferRequestedOutput(s.name) for s in self.signature.outputs]
            call = client.infer(
                self.model, inputs, model_version=self.model_version, outputs=outputs,
                client_timeout=self.timeout_s,
            )
        else:
            outputs = [
                module.InferRequestedOutput(s.name, binary_data=True)
                for s in self.signature.outputs
            ]
            call = client.infer(
                self.model, inputs, model_version=self.model_version, outputs=outputs
            )
        try:
            result = await asyncio.wait_for(call, self.timeout_s)
        except Exception as exc:
            raise self._translate(exc) from None
        produced: Tensors = {}
        for spec in self.signature.outputs:
            array = result.as_numpy(spec.name)
            if array is not None:
                produced[spec.name] = array
        return produced

    # -- warm-up -----------------------------------------------------------------------------

    def warm_up(self, runs: int, samples: list[Tensors] | None = None) -> None:
        """Check the remote model is ready and matches the signature, then run the samples.

        Runs in the repository's loader thread: a client of its own on a loop of its own.
        """
        asyncio.run(self.awarm_up(runs, samples))

    async def awarm_up(self, runs: int, samples: list[Tensors] | None = None) -> None:
        client = self._new_client()
        try:
            await self._check_ready(client)
            for _ in range(runs):
                for feeds in samples or [synthesize_inputs(self.signature)]:
                    await self._infer(client, feeds)
        finally:
            await client.close()

    async def _check_ready(self, client: Any) -> None:
        try:
            ready = await asyncio.wait_for(
                client.is_model_ready(self.model, self.model_version), self.timeout_s
            )
            if not ready:
                raise ServiceUnavailable(f"{self.where}: the model is not ready on the server")
            metadata = await asyncio.wait_for(
                client.get_model_metadata(self.model, self.model_version, as_json=True)
                if self.protocol == "grpc"
                else client.get_model_metadata(self.model, self.model_version),
                self.timeout_s,
            )
        except RoostError:
            raise
        except Exception as exc:
            raise self._translate(exc) from None
        for kind, specs in (("inputs", self.signature.inputs), ("outputs", self.signature.outputs)):
            remote = {t.get("name"): t.get("datatype") for t in metadata.get(kind) or []}
            for spec in specs:
                if remote.get(spec.name) != spec.datatype:
                    offered = ", ".join(f"{n} {d}" for n, d in remote.items()) or "none"
                    raise RoostError(
                        f"{self.where}: the remote model does not match the registry's "
                        f"signature: {kind[:-1]} '{spec.name}' {spec.datatype} expected, "
                        f"the server offers {offered}"
                    )

    # -- errors ------------------------------------------------------------------------------

    def _translate(self, exc: BaseException) -> RoostError:
        """A tritonclient / transport failure as the Roost error the client should see."""
        if isinstance(exc, RoostError):
            return exc
        if isinstance(exc, TimeoutError):  # asyncio.wait_for and aiohttp's timeouts
            return DeadlineExceeded(f"{self.where} did not answer within {self.timeout_s:g} s")
        if isinstance(exc, aiohttp.ClientConnectionError | OSError):
            return ServiceUnavailable(f"{self.where} is unreachable: {_describe(exc)}")
        if isinstance(exc, aiohttp.ClientError):
            return ServiceUnavailable(f"{self.where} failed: {_describe(exc)}")
        if isinstance(exc, InferenceServerException):
            status = str(exc.status() or "")
            message = exc.message() or str(exc)
            if self.protocol == "grpc":
                return self._translate_grpc(status, message)
            return self._translate_http(status, message)
        return RoostError(f"{self.where} failed: {_describe(exc)}")

    def _translate_http(self, status: str, message: str) -> RoostError:
        code = int(status) if status.isdigit() else 0
        if code == 404:
            return ServiceUnavailable(f"{self.where} does not serve the model: {message}")
        if code == 429 or code == 503:
            return ServiceUnavailable(f"{self.where} is unavailable: {message}")
        if code == 504:
            return DeadlineExceeded(f"{self.where}: {message}")
        if 400 <= code < 500:
            return InvalidRequest(f"{self.where} rejected the request: {message}")
        return RoostError(f"{self.where} failed ({status or 'no status'}): {message}")

    def _translate_grpc(self, status: str, message: str) -> RoostError:
        if status in _GRPC_UNAVAILABLE:
            return ServiceUnavailable(f"{self.where} is unreachable: {message}")
        if status == "StatusCode.DEADLINE_EXCEEDED":
            return DeadlineExceeded(f"{self.where} did not answer within {self.timeout_s:g} s")
        if status == "StatusCode.NOT_FOUND":
            return ServiceUnavailable(f"{self.where} does not serve the model: {message}")
        if status in _GRPC_INVALID:
            return InvalidRequest(f"{self.where} rejected the request: {message}")
        return RoostError(f"{self.where} failed ({status or 'no status'}): {message}")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
