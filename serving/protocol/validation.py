"""A decoded request checked against a model version's :class:`Signature`."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from registry.errors import InvalidRequest, RoostError
from registry.signature import Signature
from serving.protocol.tensors import FLOAT_DATATYPES, shape_text
from serving.protocol.types import InferRequest

__all__ = ["select_outputs", "validate_against_signature"]


def _check_finite(name: str, array: npt.NDArray[Any]) -> None:
    """nan_policy ``reject``: refuse NaN and +/-Inf in a floating-point input."""
    finite = np.isfinite(array)
    if finite.all():
        return
    index = int(np.flatnonzero(~finite.reshape(-1))[0])
    value = array.reshape(-1)[index]
    raise InvalidRequest(
        f"input '{name}': value {value} at index {index} is not finite; this model refuses "
        "NaN and Inf inputs (nan_policy: reject)"
    )


def validate_against_signature(
    request: InferRequest, signature: Signature, nan_policy: str = "allow"
) -> dict[str, npt.NDArray[Any]]:
    """Check the request's inputs against the signature; {name: array} in signature order.

    ``nan_policy`` is the version's knob of that name: ``reject`` refuses floating-point inputs
    holding NaN or +/-Inf.
    """
    reject_nan = nan_policy == "reject"
    given = {tensor.name: tensor for tensor in request.inputs}
    for name in given:
        if signature.input(name) is None:
            names = ", ".join(spec.name for spec in signature.inputs)
            raise InvalidRequest(f"unknown input '{name}'; model inputs are: {names}")
    feeds: dict[str, npt.NDArray[Any]] = {}
    for spec in signature.inputs:
        tensor = given.get(spec.name)
        if tensor is None:
            raise InvalidRequest(
                f"missing input '{spec.name}' ({spec.datatype}, shape {shape_text(spec.shape)})"
            )
        if tensor.datatype != spec.datatype:
            raise InvalidRequest(
                f"input '{spec.name}': expected datatype {spec.datatype}, got {tensor.datatype}"
            )
        if len(tensor.shape) != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, tensor.shape, strict=True)
        ):
            raise InvalidRequest(
                f"input '{spec.name}': expected shape {shape_text(spec.shape)}, "
                f"got {shape_text(tensor.shape)}"
            )
        if reject_nan and tensor.datatype in FLOAT_DATATYPES:
            _check_finite(spec.name, tensor.data)
        feeds[spec.name] = tensor.data.reshape(tensor.shape)
    return feeds


def select_outputs(
    request: InferRequest, signature: Signature, outputs: dict[str, npt.NDArray[Any]]
) -> list[tuple[str, npt.NDArray[Any]]]:
    """The outputs to return: those requested (in request order), or all in signature order."""
    if request.outputs is None:
        return [
            (spec.name, outputs[spec.name]) for spec in signature.outputs if spec.name in outputs
        ]
    selected: list[tuple[str, npt.NDArray[Any]]] = []
    for wanted in request.outputs:
        if signature.output(wanted.name) is None:
            names = ", ".join(spec.name for spec in signature.outputs)
            raise InvalidRequest(f"unknown output '{wanted.name}'; model outputs are: {names}")
        if wanted.name not in outputs:
            raise RoostError(f"the model produced no output '{wanted.name}'")
        selected.append((wanted.name, outputs[wanted.name]))
    return selected
