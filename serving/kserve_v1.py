"""KServe v1 ``:predict`` bodies: ``{"instances": [...]}`` as records, rows, or entities.

The transport decodes the body here, with the gateway's limits, into a
:class:`~serving.pipeline.RecordsRequest`; the data plane adapts its instances to the version
the router chose (records in that version's feature order; entity instances through the online
store, see :mod:`serving.pipeline`).
"""

from __future__ import annotations

from typing import Any

import orjson

from registry import InvalidRequest
from serving.pipeline import RecordsRequest
from serving.protocol.json_depth import check_json_depth, json_error
from serving.protocol.types import DecodeLimits

__all__ = ["decode_records", "predictions"]


def decode_records(payload: bytes, limits: DecodeLimits) -> RecordsRequest:
    """A v1 body's ``instances`` (a non-empty list) and ``id``; raises InvalidRequest."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise json_error(payload, exc, "request body", limits) from None
    if not isinstance(body, dict) or "instances" not in body:
        raise InvalidRequest('request body must be an object with "instances": [...]')
    for key, value in body.items():  # the instances' values are checked as they are adapted
        if key != "instances":
            check_json_depth(value, limits.max_json_depth, f"'{key}'", base=1)
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidRequest("instances: expected a non-empty list of records or rows")
    request_id = body.get("id") if isinstance(body.get("id"), str) else None
    return RecordsRequest(instances, request_id, len(payload))


def predictions(outputs: list[tuple[str, Any]], rows: int) -> list[dict[str, Any]]:
    """The outputs as v1 ``predictions``: one object per row, keyed by output name."""
    columns = {name: array.tolist() for name, array in outputs}
    return [{name: values[i] for name, values in columns.items()} for i in range(rows)]
