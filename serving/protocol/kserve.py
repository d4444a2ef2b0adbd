"""KServe v1 ``instances`` (records or rows) as the one 2-D input tensor of a v2 request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from registry.errors import InvalidRequest
from registry.signature import TensorSpec
from serving.protocol.json_values import json_data_to_array
from serving.protocol.types import DecodeLimits, InferRequest, RequestInput

__all__ = ["instances_to_rows", "rows_to_request"]


def instances_to_rows(
    instances: Sequence[Any], feature_names: Sequence[str] | None, model: str
) -> list[list[Any]]:
    """Inline instances as rows: records (objects keyed by ``feature_names``) or rows."""
    rows: list[list[Any]] = []
    for i, instance in enumerate(instances):
        if isinstance(instance, dict):
            if feature_names is None:
                raise InvalidRequest(
                    f"instances[{i}]: model '{model}' has no feature names; send rows "
                    "(lists of values) instead of records"
                )
            unknown = sorted(set(instance) - set(feature_names))
            if unknown:
                raise InvalidRequest(
                    f"instances[{i}]: unknown feature '{unknown[0]}'; expected features: "
                    + ", ".join(feature_names)
                )
            missing = [n for n in feature_names if n not in instance]
            if missing:
                raise InvalidRequest(f"instances[{i}]: missing feature '{missing[0]}'")
            rows.append([instance[n] for n in feature_names])
        elif isinstance(instance, list):
            rows.append(instance)
        else:
            raise InvalidRequest(f"instances[{i}]: expected an object or a list")
    return rows


def rows_to_request(
    spec: TensorSpec,
    rows: list[list[Any]],
    request_id: str | None,
    parameters: dict[str, Any],
    limits: DecodeLimits,
) -> InferRequest:
    """``rows`` as the 2-D input ``spec`` (width checked), in a request for every output."""
    width = spec.shape[1]
    for i, row in enumerate(rows):
        if width >= 0 and len(row) != width:
            raise InvalidRequest(f"instances[{i}]: expected {width} values, got {len(row)}")
    shape = (len(rows), width if width >= 0 else len(rows[0]))
    # the rows stand where 'instances' is, one level below the body
    array = json_data_to_array(spec.name, spec.datatype, shape, rows, base=1, limits=limits)
    return InferRequest(
        id=request_id,
        inputs=[RequestInput(spec.name, spec.datatype, shape, array, {})],
        outputs=None,
        parameters=parameters,
    )
