"""The data plane's pure steps (serving/pipeline.py): adapt, the entity unit, rejected records."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from registry import InvalidRequest
from registry.signature import Signature, TensorSpec
from serving.dataplane import _facts
from serving.kserve_v1 import decode_records
from serving.pipeline import CallContext, EntityBatch, RecordsRequest, Rejected, adapt
from serving.protocol import DEFAULT_LIMITS, InferRequest, RequestInput, decode_infer_request
from serving.protocol.render import json_preview


def version(names: tuple[str, ...], tags: dict[str, Any] | None = None) -> Any:
    """A stand-in for a LoadedVersion: what adapt reads of it."""
    signature = Signature(
        inputs=(TensorSpec("input", "FP32", (-1, len(names))),),
        outputs=(TensorSpec("y", "FP32", (-1,)),),
        feature_names=names,
    )
    info = SimpleNamespace(model="m", version=1, signature=signature, tags=tags or {})
    return SimpleNamespace(info=info)


def test_plain_v2_requests_pass_through_unchanged() -> None:
    request = decode_infer_request(
        b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,2],"data":[1,2]}]}'
    )
    assert adapt(request, version(("a", "b")), DEFAULT_LIMITS) is request
    # a model with a feature service: naming its input is still an ordinary request
    served = version(("a", "b"), {"feature_service": "svc"})
    assert adapt(request, served, DEFAULT_LIMITS) is request


def test_v1_records_follow_the_chosen_versions_feature_order() -> None:
    body = b'{"instances":[{"a":1,"b":2}],"id":"r-1"}'
    records = decode_records(body, DEFAULT_LIMITS)
    assert records == RecordsRequest([{"a": 1, "b": 2}], "r-1", len(body))
    ab = adapt(records, version(("a", "b")), DEFAULT_LIMITS)
    ba = adapt(records, version(("b", "a")), DEFAULT_LIMITS)
    assert isinstance(ab, InferRequest) and isinstance(ba, InferRequest)
    assert ab.inputs[0].data.tolist() == [[1.0, 2.0]]
    assert ba.inputs[0].data.tolist() == [[2.0, 1.0]]
    assert ab.id == "r-1"


def test_entity_requests_become_entity_batches() -> None:
    served = version(("x", "y"), {"feature_service": "svc"})
    records = RecordsRequest([{"entities": {"customer_id": 7}, "features": {}}], None, 10)
    batch = adapt(records, served, DEFAULT_LIMITS)
    assert isinstance(batch, EntityBatch) and batch.instances == records.instances
    assert batch.service == "svc" and batch.feature_names == ("x", "y")
    v2 = InferRequest(
        "e-1",
        [
            RequestInput("customer_id", "INT64", (2,), np.array([7, 8]), {}),
            RequestInput("key", "BYTES", (2, 1), np.array([[b"a"], [b"b"]], dtype=object), {}),
        ],
        None,
        {"timeout": 5},
    )
    batch = adapt(v2, served, DEFAULT_LIMITS)
    assert isinstance(batch, EntityBatch)
    assert batch.columns == {"customer_id": [7, 8], "key": ["a", "b"]}
    rebuilt = batch.to_request([[1.0, 2.0], [3.0, 4.0]], DEFAULT_LIMITS)
    assert rebuilt.id == "e-1" and rebuilt.parameters == {"timeout": 5}
    assert rebuilt.inputs[0].shape == (2, 2)
    # rows must line up
    v2.inputs[1] = RequestInput("key", "BYTES", (3,), np.array([b"a"] * 3, dtype=object), {})
    with pytest.raises(InvalidRequest, match="3 rows, but the other entity inputs have 2"):
        adapt(v2, served, DEFAULT_LIMITS)
    # entities for a version without a feature service
    with pytest.raises(InvalidRequest, match="has no feature service"):
        adapt(records, version(("x", "y")), DEFAULT_LIMITS)


def test_the_entity_unit_routes_v1_entity_requests_without_a_user() -> None:
    records = RecordsRequest([{"entities": {"customer_id": 42, "b": 1}}], None, 0)
    assert records.entity_unit() == "b=1"
    assert _facts(CallContext("v1-rest"), records).unit == "b=1"
    assert _facts(CallContext("v1-rest", user_id="alice"), records).unit == "alice"
    assert RecordsRequest([[1, 2]], None, 0).entity_unit() is None


def test_rejected_payloads_are_logged_as_headers_and_size() -> None:
    body = (
        b'{"id":"bad-1","inputs":[{"name":"input","datatype":"FP32","shape":[1,4],'
        b'"data":[1,2]},{"name":3}]}'
    )
    request_id, tensors = json_preview(body)
    assert request_id == "bad-1"
    rejected = Rejected(len(body), tuple(tensors), request_id)
    assert json.loads(rejected.render()) == {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4]}],
        "rejected": {"bytes": len(body)},
    }
    assert json_preview(b"{not json") == (None, [])
    assert json.loads(Rejected(5).render()) == {"inputs": [], "rejected": {"bytes": 5}}
