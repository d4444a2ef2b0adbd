"""The ONNX graph of the language model, built by hand with ``onnx.helper`` (docs/llm.md).

Inputs ``input_ids`` [B, T], ``position_ids`` [B, T], ``attention_mask`` [B, P + T] and per
layer ``past_key_values.{i}.key/value`` [B, H, P, D]; outputs ``logits`` [B, T, V] and
``present.{i}.key/value`` [B, H, P + T, D]. The mask is built inside the graph: query t (at
cache index P + t) sees key j when ``j <= P + t`` and ``attention_mask[b, j] == 1``; the
rest get a large negative bias before the Softmax (a finite one: a row that sees nothing, a
padding query, stays finite instead of NaN). Opset 17: LayerNormalization is native, GELU is
written in its erf form (ONNX Runtime fuses it).

:func:`export_model` turns trained weights into the file; :func:`build_random_model` makes the
same graph with random weights (what the serving engine develops against, and what validation
must block).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from llm.config import LAYER_NORM_EPS, ModelConfig, Params, check_params, init_params
from llm.tokenizer import BOS_ID, CHAT_TEMPLATE, EOS_ID, train_tokenizer

OPSET = 17
MASK_VALUE = -1e9
META_CONFIG = "roost.llm.config"
META_TOKENIZER = "roost.llm.tokenizer"
META_CHAT_TEMPLATE = "roost.llm.chat_template"
META_TASK = "roost.task"
TASK = "text-generation"


class _Graph:
    """Collects nodes and initializers; every helper returns the name of its output."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: np.ndarray, hint: str) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, value: np.ndarray, name: str) -> str:
        self.initializers.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None,
           outputs: list[str] | None = None, **attrs: Any) -> str:
        outs = outputs or [self.name(hint or op_type.lower())]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0]


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _attention_bias(g: _Graph) -> str:
    """[B, 1, T, P+T] float: 0 where a query may attend, MASK_VALUE elsewhere."""
    ids_shape = g.op("Shape", ["input_ids"])
    mask_shape = g.op("Shape", ["attention_mask"])
    zero, one = g.const(np.array(0, np.int64), "zero"), g.const(np.array(1, np.int64), "one")
    t = g.op("Gather", [ids_shape, one], axis=0)  # T
    s = g.op("Gather", [mask_shape, one], axis=0)  # P + T
    p = g.op("Sub", [s, t])  # P
    q_pos = g.op("Add", [g.op("Range", [zero, t, one]), p])  # [T]: P .. P+T-1
    k_pos = g.op("Range", [zero, s, one])  # [S]
    q_col = g.op("Unsqueeze", [q_pos, g.const(_i64(1), "axes")])  # [T, 1]
    causal = g.op("LessOrEqual", [k_pos, q_col])  # [T, S]
    keep = g.op("Cast", ["attention_mask"], to=TensorProto.BOOL)  # [B, S]
    keep = g.op("Unsqueeze", [keep, g.const(_i64(1, 2), "axes")])  # [B, 1, 1, S]
    allowed = g.op("And", [causal, keep])  # [B, 1, T, S]
    return g.op("Where", [allowed, g.const(np.array(0.0, np.float32), "zero_f"),
                          g.const(np.array(MASK_VALUE, np.float32), "mask_value")])


def _layer_norm(g: _Graph, x: str, gamma: str, beta: str) -> str:
    return g.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=LAYER_NORM_EPS)


def _linear(g: _Graph, x: str, w: str, b: str) -> str:
    return g.op("Add", [g.op("MatMul", [x, w]), b])


def _gelu(g: _Graph, x: str) -> str:
    scaled = g.op("Mul", [x, g.const(np.array(1 / np.sqrt(2), np.float32), "inv_sqrt2")])
    erf1 = g.op("Add", [g.op("Erf", [scaled]), g.const(np.array(1.0, np.float32), "one_f")])
    return g.op("Mul", [g.op("Mul", [x, erf1]), g.const(np.array(0.5, np.float32), "half")])


def _attention(g: _Graph, config: ModelConfig, i: int, h: str, bias: str) -> str:
    p = f"h{i}."
    heads = g.const(_i64(0, 0, config.n_heads, config.head_dim), "heads_shape")

    def split(x: str) -> str:  # [B, T, d] -> [B, H, T, D]
        return g.op("Transpose", [g.op("Reshape", [x, heads])], perm=[0, 2, 1, 3])

    q = split(_linear(g, h, p + "wq", p + "bq"))
    k = split(_linear(g, h, p + "wk", p + "bk"))
    v = split(_linear(g, h, p + "wv", p + "bv"))
    key = g.op("Concat", [f"past_key_values.{i}.key", k], outputs=[f"present.{i}.key"], axis=2)
    value = g.op("Concat", [f"past_key_values.{i}.value", v], outputs=[f"present.{i}.value"],
                 axis=2)
    scores = g.op("MatMul", [q, g.op("Transpose", [key], perm=[0, 1, 3, 2])])  # [B,H,T,S]
    scale = g.const(np.array(1 / np.sqrt(config.head_dim), np.float32), "scale")
    scores = g.op("Add", [g.op("Mul", [scores, scale]), bias])
    probs = g.op("Softmax", [scores], axis=-1)
    att = g.op("Transpose", [g.op("MatMul", [probs, value])], perm=[0, 2, 1, 3])  # [B,T,H,D]
    att = g.op("Reshape", [att, g.const(_i64(0, 0, config.d_model), "model_shape")])
    return _linear(g, att, p + "wo", p + "bo")


def build_graph(config: ModelConfig, params: Params) -> onnx.ModelProto:
    """The ONNX model (no metadata) computing the transformer of ``params``."""
    check_params(config, params)
    g = _Graph()
    for key in sorted(params):
        g.weight(params[key], key)
    bias = _attention_bias(g)
    x = g.op("Add", [g.op("Gather", ["tok_emb", "input_ids"]),
                     g.op("Gather", ["pos_emb", "position_ids"])])
    for i in range(config.n_layers):
        p = f"h{i}."
        x = g.op("Add", [x, _attention(g, config, i, _layer_norm(g, x, p + "ln1_g",
                                                                p + "ln1_b"), bias)])
        h = _gelu(g, _linear(g, _layer_norm(g, x, p + "ln2_g", p + "ln2_b"), p + "w1", p + "b1"))
        x = g.op("Add", [x, _linear(g, h, p + "w2", p + "b2")])
    x = _layer_norm(g, x, "lnf_g", "lnf_b")
    g.op("MatMul", [x, g.op("Transpose", ["tok_emb"], perm=[1, 0])], outputs=["logits"])

    heads, dim = config.n_heads, config.head_dim
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "new"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "new"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                             ["batch", "new", config.vocab_size])]
    for i in range(config.n_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                f"past_key_values.{i}.{kind}", TensorProto.FLOAT,
                ["batch", heads, "past", dim]))
            outputs.append(helper.make_tensor_value_info(
                f"present.{i}.{kind}", TensorProto.FLOAT, ["batch", heads, "total", dim]))
    graph = helper.make_graph(g.nodes, "roost_lm", inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="roost.llm")
    model.ir_version = 8  # ONNX Runtime 1.32 reads IR 8..11; 8 suits opset 17
    onnx.checker.check_model(model)
    return model


def export_model(config: ModelConfig, params: Params, tokenizer_json: str,
                 chat_template: str = CHAT_TEMPLATE,
                 extra_metadata: dict[str, str] | None = None) -> bytes:
    """The serialized ONNX file of a model, its tokenizer and chat template inside."""
    model = build_graph(config, params)
    vocab = json.loads(tokenizer_json).get("model", {}).get("vocab", {})
    if len(vocab) > config.vocab_size:
        raise ValueError(f"tokenizer has {len(vocab)} tokens, more than the model's "
                         f"vocab_size {config.vocab_size}")
    metadata = {
        META_CONFIG: config.contract_json(),
        META_TOKENIZER: tokenizer_json,
        META_CHAT_TEMPLATE: chat_template,
        META_TASK: TASK,
        **(extra_metadata or {}),
    }
    helper.set_model_props(model, metadata)
    return model.SerializeToString()


def build_random_model(config: ModelConfig, seed: int = 0) -> bytes:
    """The contract's graph with random weights and a tokenizer trained on the corpus."""
    from llm.corpus import load_corpus

    if (config.bos_token_id, config.eos_token_id) != (BOS_ID, EOS_ID):
        raise ValueError(f"model config: bos/eos token ids must be {BOS_ID}/{EOS_ID}")
    tokenizer = train_tokenizer(load_corpus().train_texts(), config.vocab_size)
    return export_model(config, init_params(config, seed), tokenizer.to_str(),
                        extra_metadata={"roost.llm.weights": f"random (seed {seed})"})


def read_metadata(model: onnx.ModelProto | bytes) -> dict[str, str]:
    """A model's ``metadata_props`` as a dict."""
    if isinstance(model, bytes):
        model = onnx.load_from_string(model)
    return {prop.key: prop.value for prop in model.metadata_props}
