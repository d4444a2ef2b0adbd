"""KServe v1 ``:predict`` bodies: ``{"instances": [...]}`` as records, rows, or entities."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from registry import InvalidRequest
from serving import oip
from serving.protocol.kserve import instances_to_rows, rows_to_request

if TYPE_CHECKING:
    from serving.dataplane import DataPlane


def decode_instances(
    plane: DataPlane, model: str, version: str | None, payload: bytes
) -> oip.InferRequest:
    """Decode a KServe v1 body: map ``instances`` (records or rows) onto the model's input.

    When the version names a feature service (``tags["feature_service"]``), instances may
    name entities instead: ``{"entities": {"customer_id": 42}, "features": {...}}``. The
    batch's features are then looked up in the online store in one call (see
    :mod:`features.online`) and the values used are returned under the request parameter
    ``roost.features`` for the prediction log.
    """
    limits = oip.current_limits()  # the entry point: the limits in force
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise oip.json_error(payload, exc, "request body", limits) from None
    if not isinstance(body, dict) or "instances" not in body:
        raise InvalidRequest('request body must be an object with "instances": [...]')
    instances = body["instances"]
    limit = limits.max_json_depth
    for key, value in body.items():  # the instances' values are checked as they are converted
        if key != "instances":
            oip.check_json_depth(value, limit, f"'{key}'", base=1)
    info = plane.repository.resolve(model, version).info
    signature = info.signature
    if len(signature.inputs) != 1 or len(signature.inputs[0].shape) != 2:
        raise InvalidRequest(
            f"model '{model}' does not take one 2-D input; use the v2 infer endpoint"
        )
    spec = signature.inputs[0]
    if not isinstance(instances, list) or not instances:
        raise InvalidRequest("instances: expected a non-empty list of records or rows")
    names = signature.feature_names
    rows: list[list[Any]] = []
    parameters: dict[str, Any] = {}
    if isinstance(instances[0], dict) and "entities" in instances[0]:
        service = info.tags.get("feature_service")
        if not isinstance(service, str) or names is None:
            raise InvalidRequest(
                f"instances[0].entities: model '{model}' version {info.version} has no "
                "feature service; send the features inline"
            )
        from features.online import LOG_PARAMETER, shared_online_features

        oip.check_json_depth(instances, limit, "'instances'", base=1)
        features = getattr(plane, "features", None) or shared_online_features(
            plane.repository.settings.home
        )
        lookup = features.lookup(service, names, instances)
        rows = lookup.rows
        parameters[LOG_PARAMETER] = lookup.to_log()
    else:  # records or rows, inline
        rows = instances_to_rows(instances, names, model)
    request_id = body.get("id") if isinstance(body.get("id"), str) else None
    return rows_to_request(spec, rows, request_id, parameters, limits)
