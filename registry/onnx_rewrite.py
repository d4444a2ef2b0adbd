"""Registration-time rewrite of a standard scikit-learn export: ZipMap -> probability tensor.

``skl2onnx.to_onnx(clf, X[:1])`` ends a classifier with a ``ZipMap`` node (ZipMap is on by
default) whose output, ``output_probability``, is a sequence of maps (``seq(map(int64,
tensor(float)))``): one ``{class label: probability}`` dict per row. The Open Inference Protocol
has no such datatype, but the tensor that feeds the ZipMap is exactly what a client wants: FP32
``[N, n_classes]``, one column per class in the order of the ZipMap's class labels.

:func:`rewrite_zipmap_outputs` drops every ZipMap node that produces a graph output and makes
its input tensor the graph output instead, **under the ZipMap output's name** (so
``output_probability`` stays ``output_probability``, now FP32 ``[N, n_classes]``). The result is
checked by ``onnx.checker`` and loaded once by ONNX Runtime. The registry stores the rewritten
bytes (the version's sha256 is theirs) and records the rewrite in the version's lineage
(:meth:`ZipMapRewrite.lineage`).

A non-tensor output that is not a ZipMap's (or a ZipMap whose output is also consumed inside
the graph) is refused with :class:`UnsafeRewrite`, whose message names the output and the export
option that avoids it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from registry.artifacts import sha256_bytes
from registry.signature import Signature, UnsupportedType, signature_from_onnx

REWRITE_NAME = "zipmap -> probability tensor"

ZIPMAP_FIX = (
    'export without ZipMap: skl2onnx.to_onnx(model, X[:1], options={"zipmap": False}) '
    "(onnxmltools: convert_lightgbm/convert_xgboost(..., zipmap=False))"
)


class UnsafeRewrite(ValueError):
    """The model has an output Roost cannot serve and cannot safely rewrite."""


@dataclass(frozen=True)
class ZipMapRewrite:
    """What :func:`rewrite_zipmap_outputs` did: the new bytes and what changed."""

    data: bytes
    original_sha256: str
    class_labels: dict[str, list[int | str]]
    """Per rewritten output, the class label of each probability column, in column order."""

    def lineage(self) -> dict[str, Any]:
        return {
            "rewritten_from_sha256": self.original_sha256,
            "rewrite": REWRITE_NAME,
            "class_labels": {name: list(labels) for name, labels in self.class_labels.items()},
        }


def _type_text(type_proto: Any) -> str:
    """ONNX Runtime's spelling of a type: tensor(float), seq(map(int64,tensor(float))), ..."""
    from onnx import TensorProto

    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        name = TensorProto.DataType.Name(type_proto.tensor_type.elem_type).lower()
        return f"tensor({name})"
    if kind == "sequence_type":
        return f"seq({_type_text(type_proto.sequence_type.elem_type)})"
    if kind == "map_type":
        key = TensorProto.DataType.Name(type_proto.map_type.key_type).lower()
        return f"map({key},{_type_text(type_proto.map_type.value_type)})"
    if kind == "optional_type":
        return f"optional({_type_text(type_proto.optional_type.elem_type)})"
    return str(kind)


def _is_seq_of_maps(type_proto: Any) -> bool:
    return bool(
        type_proto.WhichOneof("value") == "sequence_type"
        and type_proto.sequence_type.elem_type.WhichOneof("value") == "map_type"
    )


def _rename_uses(graph: Any, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` wherever ``graph`` or its subgraphs make or read it."""
    from onnx import AttributeProto

    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                _rename_uses(attr.g, old, new)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _rename_uses(sub, old, new)
    for info in graph.value_info:
        if info.name == old:
            info.name = new


def rewrite_zipmap_outputs(data: bytes) -> ZipMapRewrite | None:
    """Replace ZipMap outputs by their probability tensors; None when no output needs it.

    Raises :class:`UnsafeRewrite` (a ``ValueError``) naming the output and the fix when a
    non-tensor output cannot be rewritten safely.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_model_from_string(data)
    graph = model.graph
    non_tensor = [o for o in graph.output if o.type.WhichOneof("value") != "tensor_type"]
    if not non_tensor:
        return None
    producers = {name: node for node in graph.node for name in node.output}
    consumers = {name for node in graph.node for name in node.input}
    graph_inputs = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    output_names = [o.name for o in graph.output]
    labels: dict[str, list[int | str]] = {}
    for out in non_tensor:
        type_text = _type_text(out.type)
        node = producers.get(out.name)
        if not _is_seq_of_maps(out.type):
            raise UnsafeRewrite(
                f"output '{out.name}' has unsupported ONNX type {type_text} (expected a tensor); "
                "Roost serves tensor outputs only: change the export so that it ends in a "
                "tensor (a sequence of tensors: add a ConcatFromSequence node)"
            )
        if node is None or node.op_type != "ZipMap":
            made_by = f"node {node.op_type}" if node is not None else "the graph's input"
            raise UnsafeRewrite(
                f"output '{out.name}' has unsupported ONNX type {type_text} (expected a tensor) "
                f"and is produced by {made_by}, not by a ZipMap Roost could remove; "
                f"{ZIPMAP_FIX}"
            )
        source = node.input[0]
        if out.name in consumers or source in graph_inputs or source in output_names:
            raise UnsafeRewrite(
                f"output '{out.name}' (ZipMap) cannot be rewritten safely: its tensors are "
                f"used elsewhere in the graph; {ZIPMAP_FIX}"
            )
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        class_labels: list[int | str] = [
            *(int(v) for v in attrs.get("classlabels_int64s", [])),
            *(v.decode() if isinstance(v, bytes) else str(v)
              for v in attrs.get("classlabels_strings", [])),
        ]
        if not class_labels:
            raise UnsafeRewrite(
                f"output '{out.name}' (ZipMap) has no class labels; {ZIPMAP_FIX}"
            )
        graph.node.remove(node)
        _rename_uses(graph, source, out.name)
        index = output_names.index(out.name)
        graph.output.remove(graph.output[index])
        graph.output.insert(
            index,
            helper.make_tensor_value_info(out.name, TensorProto.FLOAT, [None, len(class_labels)]),
        )
        labels[out.name] = class_labels
    # ZipMap was the only ai.onnx.ml node of some exports; an unused opset import is harmless.
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise UnsafeRewrite(
            f"the model without its ZipMap does not pass onnx.checker ({exc}); {ZIPMAP_FIX}"
        ) from None
    rewritten = model.SerializeToString()
    _load_once(rewritten)
    return ZipMapRewrite(rewritten, sha256_bytes(data), labels)


def _load_once(data: bytes) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise UnsafeRewrite(
            f"the model without its ZipMap does not load in ONNX Runtime ({exc}); {ZIPMAP_FIX}"
        ) from None


def servable_signature(
    data: bytes, feature_names: list[str] | None = None
) -> tuple[bytes, Signature, ZipMapRewrite | None]:
    """The bytes to store, their signature, and the rewrite that produced them (if any).

    A model whose outputs are all tensors is returned unchanged. One with a ZipMap output is
    rewritten (:func:`rewrite_zipmap_outputs`); any other unsupported type raises ``ValueError``.
    """
    try:
        return data, signature_from_onnx(data, feature_names), None
    except UnsupportedType as exc:
        if exc.role != "output":
            raise
        rewrite = rewrite_zipmap_outputs(data)
        if rewrite is None:
            raise
    return rewrite.data, signature_from_onnx(rewrite.data, feature_names), rewrite
