"""The Smart Turn graph made to read fewer than 800 feature frames (so that it may hear only the turn, not
8 s), its GELUs made one operation each, and its attention logits kept in float.

The exported graph is fixed at 8 s of input (800 Whisper frames, 400 encoder positions) in two places
only: the encoder adds its whole table of 400 position embeddings, and one shape constant of its attention
reshapes says 400. Every other operation already follows the input's length (the convolutions, the
attention, the attention pooling before the classifier). The rewrite adds the *last* T rows of the table
to a T-position input and lets the reshapes infer the length. Last, not first: the model reads audio
left-padded to 8 s, so the speech it was trained on sits at the end of the window; a shorter input drops
leading padding and keeps every position of the speech where it was. At 800 frames the graph so rewritten
answers exactly as the original (tests/unit/test_smart_turn.py); a shorter input is not the model's own
input, and its verdicts move (worker/speech/smart_turn.py, `WINDOWS`).

The exporter wrote each GELU as five element-wise operations (x / sqrt 2, erf, + 1, * 0.5, * x), which ONNX
Runtime does not fuse in this order: one `com.microsoft.Gelu` (the same erf form) replaces each, 13.3 ->
11.7 ms a decision at 400 frames, the same probabilities.

The attention logits stay in float. The file holds each query-key product quantized to 8 bits and back
before the softmax, which ONNX Runtime runs as one int8 softmax (`QLinearSoftmax`): 28 % of a decision, for
3.8 M elements in the 8-s window. Read straight from the product (`MatMulIntegerToFloat`), the float softmax
costs a seventh of that: 30-31 -> 23 ms a decision. The probabilities move (the graph is the same weights
with one rounding fewer, not the file's arithmetic): on 540 turns of nine voices, mean change 0.048 and 32
verdicts of 540 flipped at 0.5, against 70 between the file and its weights in float, with the same
ranking of complete over incomplete turns (AUC 0.711 against 0.706; `bench/turn_window.py --logits`).

A graph that does not have this shape (a later model file) raises `GraphChanged`; the caller then keeps the
fixed 8-s input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

POSITIONS = "inner.encoder.embed_positions.weight"


class GraphChanged(ValueError):
    """The model file is not the graph this rewrite knows."""


def any_length(model: bytes, float_logits: bool = True) -> bytes:
    """The serialized graph with `input_features` of any length up to 800 frames, its GELUs fused and (with
    `float_logits`) its attention logits kept in float."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load_from_string(model)
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    table = inits.get(POSITIONS)
    if table is None or len(graph.input) != 1:
        raise GraphChanged("no position table, or not one input")
    positions = int(table.dims[0])
    nodes = list(graph.node)
    adds = [k for k, n in enumerate(nodes) if n.op_type == "Add" and POSITIONS in n.input]
    if len(adds) != 1:
        raise GraphChanged("the position table is not added once")
    add = nodes[adds[0]]
    encoded = add.input[0] if add.input[1] == POSITIONS else add.input[1]
    # The reshape constants that spell the sequence length: one-element int64 initializers equal to it,
    # read only by the Concat nodes that build Reshape shapes.
    readers: dict[str, list[str]] = {}
    for n in nodes:
        for name in n.input:
            readers.setdefault(name, []).append(n.op_type)
    lengths = [
        i
        for i in graph.initializer
        if i.name != POSITIONS
        and i.data_type == onnx.TensorProto.INT64
        and list(i.dims) == [1]
        and int(numpy_helper.to_array(i)[0]) == positions
    ]
    if not lengths or any(set(readers.get(i.name, [])) != {"Concat"} for i in lengths):
        raise GraphChanged("the sequence length is not only a reshape constant")
    for i in lengths:
        i.CopyFrom(numpy_helper.from_array(np.array([-1], dtype=np.int64), i.name))
    frames = graph.input[0].type.tensor_type.shape.dim[2]
    frames.ClearField("dim_value")
    frames.dim_param = "frames"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], dtype=np.int64), "pbx_axis0"),
            numpy_helper.from_array(np.array([positions], dtype=np.int64), "pbx_positions"),
        ]
    )
    sliced = [
        helper.make_node("Shape", [encoded], ["pbx_length"], start=1, end=2),
        helper.make_node("Sub", ["pbx_positions", "pbx_length"], ["pbx_first"]),
        helper.make_node("Slice", [POSITIONS, "pbx_first", "pbx_positions", "pbx_axis0"], ["pbx_table"]),
    ]
    for k, name in enumerate(add.input):
        if name == POSITIONS:
            add.input[k] = "pbx_table"
    del graph.node[:]
    scalars = {
        i.name: float(numpy_helper.to_array(i).reshape(-1)[0])
        for i in graph.initializer
        if i.data_type == onnx.TensorProto.FLOAT and int(np.prod(i.dims)) == 1
    }
    rewritten = _fused_gelus(nodes[: adds[0]] + sliced + nodes[adds[0] :], scalars)
    graph.node.extend(_float_logits(rewritten) if float_logits else rewritten)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    del graph.value_info[:]  # the exporter's shapes say 400 positions; ONNX Runtime infers its own
    used = {name for n in graph.node for name in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return bytes(proto.SerializeToString())


def _index(nodes: list[Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """Which node makes each output, and how many inputs read each name."""
    made = {n.output[0]: n for n in nodes}
    readers: dict[str, int] = {}
    for n in nodes:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    return made, readers


def _fused_gelus(nodes: list[Any], scalars: dict[str, float]) -> list[Any]:
    """`nodes` with each x / sqrt(2) -> Erf -> + 1 -> * 0.5 -> * x chain, whose steps nothing else reads, as
    one Gelu node (`scalars`: the graph's one-value float constants)."""
    from onnx import helper

    made, readers = _index(nodes)

    def producer(name: str, op: str, constant: float | None = None) -> Any:
        n = made.get(name)
        if n is None or n.op_type != op or readers.get(name) != 1:
            return None
        if constant is not None and not any(abs(scalars.get(i, np.inf) - constant) < 1e-6 for i in n.input):
            return None
        return n

    def feeding(node: Any, op: str, constant: float | None = None) -> Any:
        """The node of type `op` that makes one of `node`'s inputs, if any (`node` may be None)."""
        if node is None:
            return None
        return next((p for p in (producer(i, op, constant) for i in node.input) if p is not None), None)

    gone: set[int] = set()
    swap: dict[int, Any] = {}
    for last in nodes:
        if last.op_type != "Mul":
            continue
        for x, other in ((last.input[0], last.input[1]), (last.input[1], last.input[0])):
            half = producer(other, "Mul", 0.5)
            plus = feeding(half, "Add", 1.0)
            erf = feeding(plus, "Erf")
            div = producer(erf.input[0], "Div", float(np.sqrt(2.0))) if erf is not None else None
            if div is None or div.input[0] != x:
                continue
            gone |= {id(div), id(erf), id(plus), id(half)}
            swap[id(last)] = helper.make_node("Gelu", [x], list(last.output), domain="com.microsoft")
            break
    return [swap.get(id(n), n) for n in nodes if id(n) not in gone]


def _float_logits(nodes: list[Any]) -> list[Any]:
    """`nodes` with each attention softmax reading its logits straight from the query-key product: the
    quantize/dequantize pair between them (read by nothing else) dropped."""
    made, readers = _index(nodes)
    gone: set[int] = set()
    for softmax in nodes:
        if softmax.op_type != "Softmax":
            continue
        dq = made.get(softmax.input[0])
        q = made.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        product = made.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        if product is None or product.op_type != "MatMul" or q is None or dq is None:
            continue
        if readers.get(q.output[0]) != 1 or readers.get(dq.output[0]) != 1:
            continue
        softmax.input[0] = product.output[0]
        gone |= {id(q), id(dq)}
    return [n for n in nodes if id(n) not in gone]
