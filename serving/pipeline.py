"""The data plane's request types and its pure steps: adapt, and the entity batch enrich fills.

Transports decode their wire format themselves and hand :meth:`serving.dataplane.DataPlane.infer`
either an :class:`~serving.protocol.InferRequest` (OIP v2: JSON, binary extension, gRPC) or a
:class:`RecordsRequest` (KServe v1 ``instances``, not yet adapted). A payload that does not
decode goes to :meth:`~serving.dataplane.DataPlane.reject` with a :class:`Rejected` preview.

**Entity requests** (features looked up in the online store). A version whose tags name a
feature service (``tags["feature_service"]``, with ``feature_names``, one 2-D input) takes,
instead of its input tensor:

* KServe v1: instances ``{"entities": {"customer_id": 42}, "features": {"amount": 80.0, ...}}``;
* OIP v2 (REST JSON, binary extension, gRPC): one input per entity key and per request-time
  value, named after it, one element per row (shape ``[n]`` or ``[n, 1]``), e.g. ``customer_id``
  INT64 ``[2]`` and ``amount`` FP64 ``[2]``. A request that names the model's own input is an
  ordinary request.

:func:`adapt` turns either form into an :class:`EntityBatch`; the data plane's enrich step looks
it up (one ``get_online_features`` call, off the event loop) and builds the model input from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from registry import InvalidRequest
from registry.signature import TensorSpec
from serving.auth import ANONYMOUS, Principal
from serving.protocol.json_depth import check_json_depth
from serving.protocol.kserve import instances_to_rows, rows_to_request
from serving.protocol.render import render_rejected
from serving.protocol.types import DecodeLimits, InferRequest
from serving.router import Decision

if TYPE_CHECKING:
    from asyncio import Future

    from serving.repository import LoadedVersion

FEATURE_SERVICE_TAG = "feature_service"


@dataclass(frozen=True)
class CallContext:
    """What a transport knows about the caller, beyond the payload."""

    protocol: str
    user_id: str | None = None
    request_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    """Request headers with lower-case names (segment rules and feature flags read them)."""
    unit: str | None = None
    """The experiment unit when it is not the user (e.g. an entity id); default: user_id."""
    principal: Principal = ANONYMOUS
    """Who is calling (the API key the edge or the gRPC servicer authorized)."""
    arrived: float | None = None
    """``time.monotonic()`` when the transport started on the request: its queue deadline
    counts from here (None: from when it reaches the queue)."""
    durable: list[Future[None]] | None = None
    """A transport that awaits these before its answer leaves (REST v2) passes a list: the log
    step puts the record's durability wait here instead of awaiting it, so the log's sync
    overlaps the response's encoding. None: the log step waits itself."""
    alone: bool = False
    """The transport's request is the only one in flight in this process, and it calls
    ``PredictionLogWriter.sync_here`` before it awaits ``durable``: the log's fdatasync then
    runs on the event loop instead of through the syncer thread (two thread hand-offs fewer)."""


@dataclass(frozen=True, slots=True)
class RecordsRequest:
    """A KServe v1 body, decoded but not adapted: ``instances`` are records, rows or entity
    instances, which become the chosen version's input in the adapt step."""

    instances: list[Any]
    id: str | None
    size: int
    """The body's size in bytes (what the log records when the instances do not adapt)."""

    @property
    def parameters(self) -> dict[str, Any]:
        return {}

    def entity_unit(self) -> str | None:
        """The first instance's entity id (``customer_id=42``): the experiment unit of entity
        requests without a ``roost-user``."""
        first = self.instances[0]
        entities = first.get("entities") if isinstance(first, dict) else None
        if not isinstance(entities, dict) or not entities:
            return None
        key = sorted(entities)[0]
        value = entities[key]
        return f"{key}={value}" if isinstance(value, str | int | float) else None


@dataclass(frozen=True, slots=True)
class Rejected:
    """What the log keeps of a payload that did not decode: its size and the tensor headers
    (name, datatype, shape; never data) that could be read."""

    size: int
    tensors: tuple[dict[str, Any], ...] = ()
    request_id: str | None = None
    """The request's own ``id``, when it could be read."""

    def render(self) -> str:
        return render_rejected(self.size, self.tensors)


@dataclass(slots=True)
class EntityBatch:
    """Rows to look up in the online store, for the input ``spec`` of a version."""

    service: str
    feature_names: tuple[str, ...]
    spec: TensorSpec
    request_id: str | None
    instances: list[Any] | None = None
    """KServe v1 entity instances ``{"entities": {...}, "features": {...}}``."""
    columns: dict[str, list[Any]] | None = None
    """OIP v2 entity inputs: input name -> one value per row."""
    outputs: Any = None
    """The v2 request's requested outputs (kept on the adapted request)."""
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return "instances" if self.instances is not None else "inputs"

    def to_request(self, rows: list[list[Any]], limits: DecodeLimits) -> InferRequest:
        """The looked-up rows as the version's input."""
        request = rows_to_request(self.spec, rows, self.request_id, self.parameters, limits)
        request.outputs = self.outputs
        return request


@dataclass(frozen=True)
class InferResult:
    model: str
    version: int
    request_id: str
    outputs: list[tuple[str, np.ndarray]]
    decision: Decision
    request: InferRequest
    """The request as the model saw it (adapted, with looked-up features)."""

    def response_parameters(self) -> dict[str, str]:
        """The router's decision, as OIP response ``parameters``."""
        params = {"roost_variant": self.decision.variant, "roost_route": self.decision.route}
        if self.decision.experiment:
            params["roost_experiment"] = self.decision.experiment
        return params


@dataclass(slots=True)
class PipelineState:
    """One request's progress through the pipeline (what its log record needs)."""

    started: float
    request_id: str
    loaded: LoadedVersion | None = None
    decision: Decision | None = None
    adapted: InferRequest | None = None
    features: dict[str, Any] | None = None


# -- adapt ------------------------------------------------------------------------------------


def _tabular_input(loaded: LoadedVersion) -> TensorSpec | None:
    inputs = loaded.info.signature.inputs
    return inputs[0] if len(inputs) == 1 and len(inputs[0].shape) == 2 else None


def _feature_service(loaded: LoadedVersion) -> str | None:
    service = loaded.info.tags.get(FEATURE_SERVICE_TAG)
    return service if isinstance(service, str) else None


def adapt(
    request: InferRequest | RecordsRequest, loaded: LoadedVersion, limits: DecodeLimits
) -> InferRequest | EntityBatch:
    """``request`` as the chosen version's input, or the entity batch to look up for it."""
    if isinstance(request, RecordsRequest):
        return _adapt_records(request, loaded, limits)
    if not loaded.info.tags or _feature_service(loaded) is None:
        return request  # the hot path: nothing to adapt
    spec = _tabular_input(loaded)
    names = loaded.info.signature.feature_names
    if spec is None or names is None or any(t.name == spec.name for t in request.inputs):
        return request
    return EntityBatch(
        service=_feature_service(loaded) or "",
        feature_names=tuple(names),
        spec=spec,
        request_id=request.id,
        columns=_entity_columns(request),
        outputs=request.outputs,
        parameters=request.parameters,
    )


def _adapt_records(
    records: RecordsRequest, loaded: LoadedVersion, limits: DecodeLimits
) -> InferRequest | EntityBatch:
    info = loaded.info
    spec = _tabular_input(loaded)
    if spec is None:
        raise InvalidRequest(
            f"model '{info.model}' does not take one 2-D input; use the v2 infer endpoint"
        )
    instances = records.instances
    names = info.signature.feature_names
    if isinstance(instances[0], dict) and "entities" in instances[0]:
        service = _feature_service(loaded)
        if service is None or names is None:
            raise InvalidRequest(
                f"instances[0].entities: model '{info.model}' version {info.version} has no "
                "feature service; send the features inline"
            )
        check_json_depth(instances, limits.max_json_depth, "'instances'", base=1)
        return EntityBatch(service, tuple(names), spec, records.id, instances=instances)
    rows = instances_to_rows(instances, names, info.model)
    return rows_to_request(spec, rows, records.id, {}, limits)


def _entity_columns(request: InferRequest) -> dict[str, list[Any]]:
    """A v2 entity request's inputs as columns of plain values (one per row)."""
    columns: dict[str, list[Any]] = {}
    rows: int | None = None
    for tensor in request.inputs:
        shape = tensor.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise InvalidRequest(
                f"input '{tensor.name}': an entity input has one value per row (shape [n] or "
                f"[n, 1]), got {list(shape)}"
            )
        if rows is not None and shape[0] != rows:
            raise InvalidRequest(
                f"input '{tensor.name}': {shape[0]} rows, but the other entity inputs have {rows}"
            )
        rows = shape[0]
        values = tensor.data.reshape(-1).tolist()
        if tensor.datatype == "BYTES":
            values = [_text(tensor.name, v) for v in values]
        columns[tensor.name] = values
    return columns


def _text(name: str, value: Any) -> str:
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"input '{name}': an entity key must be UTF-8 text") from None

