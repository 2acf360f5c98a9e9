"""What the Smart Turn model's verdicts do when it hears less than its 8-s window: the figures behind the
short window (worker/speech/smart_turn.py, WINDOWS) and the two ways rejected, in docs/performance.md.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.turn_window
    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.turn_window --logits
    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.turn_window --shift

60 turns (the 10 complete sentences and 10 cut-off prefixes of bench/turn_eval.py, in three voice variants,
0.5 s of floor before, cut 120 ms after the last loud frame, as the server sends them), each heard:

- in the 8-s window (the reference: the file's arithmetic) and in the server's short window (the turn and
  0.5 s, at most 4 s), and both by the server's graph (its attention logits in float,
  worker/speech/turn_graph.py);
- by the same graph with its weights dequantized and every activation in float (is the move int8's?);
- in the 8-s window with the leading padding positions stood for by one token per group of `s` (the group's
  middle position, log(s) added to its attention logits in every layer and in the pooling): the same
  positions, fewer tokens.

For each: mean change of the probability and verdicts flipped at 0.5 against the reference, accuracy
against the labels, and CPU per decision. `--logits`: only the server's graph against the file's arithmetic
and the float one, on 540 turns (held-out sentences too, all nine voices): AUC, accuracy, precision and
recall, flips, and a bootstrap interval of the AUC's difference. `--shift`: on the same 540 turns, the short
window's log-odds shift (worker/speech/smart_turn.py, SHORT_SHIFT) fit on the 10 + 10 sentences tuned on and
judged on the 20 + 20 held out, against the 8-s window: the same scores, and bootstrap intervals of the
differences in AUC and accuracy.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.turn_eval import COMPLETE, INCOMPLETE, on_floor, say, voices_here
from worker.speech.smart_turn import (
    SHORT_SHIFT,
    inference_session,
    model_path,
    shifted,
    trim_trailing,
    window_frames,
)
from worker.speech.turn_features import FRAMES, log_mel
from worker.speech.turn_graph import POSITIONS, any_length

PADDING_MARGIN = 20  # feature frames of padding computed exactly before the turn in the grouped variant


def as_float(graph: bytes) -> bytes:
    """The graph with every weight dequantized once and every activation's quantize/dequantize pair gone."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(graph)
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    alias: dict[str, str] = {}
    kept, weights = [], []
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            q, scale, zero = (numpy_helper.to_array(inits[name]).astype(np.float32) for name in n.input[:3])
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if scale.size > 1:
                shape = [1] * q.ndim
                shape[axis] = -1
                scale, zero = scale.reshape(shape), zero.reshape(shape)
            weights.append(numpy_helper.from_array(((q - zero) * scale).astype(np.float32), n.output[0]))
        elif n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            alias[n.output[0]] = n.input[0]
        else:
            kept.append(n)
    for n in kept:
        for k, name in enumerate(n.input):
            while name in alias:
                name = alias[name]
            n.input[k] = name
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(weights)
    used = {name for n in g.node for name in n.input}
    live = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(live)
    return bytes(proto.SerializeToString())


def grouped(graph: bytes) -> bytes:
    """`any_length`'s graph taking two more inputs: `pad_positions` (the position each leading padding token
    stands at) and `pad_log_counts` (log of how many positions it stands for). The input's first frames must
    be padding: its first two encoder rows are the window's first padding row and an inner one."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load_from_string(graph)
    g = proto.graph
    g.input.extend(
        [
            helper.make_tensor_value_info("pad_positions", TensorProto.INT64, ["pads"]),
            helper.make_tensor_value_info("pad_log_counts", TensorProto.FLOAT, ["pads"]),
        ]
    )
    for name, value in (("g0", [0]), ("g1", [1]), ("g2", [2]), ("gend", [2**62]), ("g400", [400]),
                        ("gkeys", [1, 1, 1, -1]), ("gpool", [1, -1, 1])):  # fmt: skip
        g.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.int64), name))
    g.initializer.append(numpy_helper.from_array(np.zeros(1, dtype=np.float32), "gzero"))
    nodes = list(g.node)
    slice_at = next(k for k, n in enumerate(nodes) if n.op_type == "Slice" and n.input[0] == POSITIONS)
    add = next(n for n in nodes if n.op_type == "Add" and "pbx_table" in n.input)
    x = add.input[0] if add.input[1] == "pbx_table" else add.input[1]
    zeros = helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0])
    built = [
        helper.make_node("Slice", [x, "g0", "g1", "g1"], ["g_first"]),
        helper.make_node("Slice", [x, "g1", "g2", "g1"], ["g_inner"]),
        helper.make_node("Slice", [x, "g1", "gend", "g1"], ["g_rest"]),
        helper.make_node("Shape", ["g_rest"], ["g_n"], start=1, end=2),
        helper.make_node("Sub", ["g400", "g_n"], ["g_from"]),
        helper.make_node("Slice", [POSITIONS, "g_from", "g400", "g0"], ["g_pos_rest"]),
        helper.make_node("Slice", [POSITIONS, "g0", "g1", "g0"], ["g_pos_first"]),
        helper.make_node("Gather", [POSITIONS, "pad_positions"], ["g_pos_pad"], axis=0),
        helper.make_node("Add", ["g_first", "g_pos_first"], ["g_t0"]),
        helper.make_node("Add", ["g_inner", "g_pos_pad"], ["g_tpad"]),
        helper.make_node("Add", ["g_rest", "g_pos_rest"], ["g_trest"]),
        helper.make_node("Concat", ["g_t0", "g_tpad", "g_trest"], [add.output[0]], axis=1),
        helper.make_node("ConstantOfShape", ["g_n"], ["g_zrest"], value=zeros),
        helper.make_node("Concat", ["gzero", "pad_log_counts", "g_zrest"], ["g_bias"], axis=0),
        helper.make_node("Reshape", ["g_bias", "gkeys"], ["g_bias_keys"]),
        helper.make_node("Reshape", ["g_bias", "gpool"], ["g_bias_pool"]),
    ]
    body = [n for n in nodes[slice_at:] if n is not add and n.output[0] not in ("pbx_table",)]
    body = [n for n in body if not (n.op_type == "Slice" and n.input[0] == POSITIONS)]
    made = {n.output[0]: n for n in body}
    biased: dict[int, str] = {}
    for n in body:
        if n.op_type != "Softmax":
            continue
        keys = next(a.i for a in n.attribute if a.name == "axis") == -1
        dq = made.get(n.input[0])
        # Before the quantize step, so that ONNX Runtime still fuses the int8 softmax.
        target = made[dq.input[0]] if dq is not None and dq.op_type == "DequantizeLinear" else n
        biased[id(target)] = "g_bias_keys" if keys else "g_bias_pool"
    out = nodes[:slice_at] + built
    for n in body:
        if id(n) in biased:
            out.append(helper.make_node("Add", [n.input[0], biased[id(n)]], [n.input[0] + "_biased"]))
            n.input[0] = n.input[0] + "_biased"
        out.append(n)
    del g.node[:]
    g.node.extend(out)
    return bytes(proto.SerializeToString())


def grouped_inputs(audio: np.ndarray, features: np.ndarray, group: int) -> dict[str, np.ndarray]:
    """The turn and PADDING_MARGIN frames before it, and one token per `group` leading padding positions."""
    frames = min(FRAMES, -(-min(len(audio), 128000) // 160) + PADDING_MARGIN)
    frames += frames % 2
    leading = 400 - frames // 2  # padding positions 1..leading stood for
    starts = np.arange(1, leading + 1, group)
    sizes = np.minimum(group, leading + 1 - starts)
    return {
        "input_features": np.ascontiguousarray(features[None, :, -frames:]),
        "pad_positions": (starts + (sizes - 1) // 2).astype(np.int64),
        "pad_log_counts": np.log(sizes).astype(np.float32),
    }


def turns() -> tuple[list[np.ndarray], np.ndarray]:
    clips, labels = [], []
    for k, text in enumerate(COMPLETE + INCOMPLETE):
        for voice in ("joe", "joe fast", "joe slow"):
            audio, _, end = on_floor(say(text, voice), 0.5, 0.3, seed=k)
            clips.append(trim_trailing(audio[: (end + 200) * 16]))
            labels.append(text in COMPLETE)
    return clips, np.array(labels)


# Held-out sentences for `--logits` (not tuned on): finished, and cut off.
MORE_COMPLETE = [
    "Please call me back tomorrow morning.", "I already paid the bill last week.",
    "Where is the nearest branch?", "My flight was cancelled this afternoon.",
    "Can I speak to a manager, please?", "The heating in my flat is broken.",
    "I want to upgrade my phone plan.", "How much does the premium plan cost?",
    "We will arrive around nine o'clock.", "I forgot my password again.",
    "Do you deliver to the countryside?", "The room was very clean, thanks.",
    "I'd like a refund for the shoes.", "Which platform does the train leave from?",
    "Our meeting is moved to Friday.", "Yes, that works for me.",
    "No, I don't need anything else.", "Send the documents to my office.",
    "It's been charged twice this month.", "Can you repeat the last number?",
]  # fmt: skip
MORE_INCOMPLETE = [
    "Please call me back", "I already paid the", "Where is the", "My flight was", "Can I speak to",
    "The heating in my", "I want to upgrade", "How much does the", "We will arrive around", "I forgot my",
    "Do you deliver to", "The room was", "I'd like a refund for", "Which platform does",
    "Our meeting is moved to", "Yes, that works", "No, I don't need", "Send the documents to",
    "It's been charged", "Can you repeat the",
]  # fmt: skip


def auc(p: np.ndarray, labels: np.ndarray) -> float:
    """Of every (complete, incomplete) pair, the share the model ranks right."""
    pos, neg = p[labels], p[~labels]
    return float(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))


def wider_set() -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """540 turns: 30 finished sentences and 30 cut off, in the nine voices of bench/turn_eval.py; their
    labels, and which are of the held-out sentences."""
    clips, labels, held = [], [], []
    for v, voice in enumerate(voices_here()):
        for label, texts in ((True, COMPLETE + MORE_COMPLETE), (False, INCOMPLETE + MORE_INCOMPLETE)):
            for k, text in enumerate(texts):
                audio, _, end = on_floor(say(text, voice), 0.5, 0.3, seed=7000 + 100 * v + k)
                clips.append(trim_trailing(audio[: (end + 200) * 16]))
                labels.append(label)
                held.append(k >= len(COMPLETE))
    return clips, np.array(labels), np.array(held)


def scores(p: np.ndarray, y: np.ndarray) -> str:
    found = np.sum((p >= 0.5) & y)
    return (
        f"AUC {auc(p, y):.3f}, accuracy {np.mean((p >= 0.5) == y):.3f}, precision "
        f"{found / max(1, np.sum(p >= 0.5)):.3f}, recall {found / y.sum():.3f}"
    )


def log_odds(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return np.asarray(np.log(q / (1 - q)))


def shift() -> None:
    """The short window's log-odds shift: fit (mean difference of log-odds from the 8-s window's) on the
    sentences tuned on, judged on the held-out ones."""
    clips, y, held = wider_set()
    session = inference_session(any_length(model_path().read_bytes()))

    def heard(features: np.ndarray) -> float:
        return float(np.asarray(session.run(None, {"input_features": features})[0]).reshape(-1)[0])

    whole, short = np.zeros(len(y)), np.zeros(len(y))
    for k, clip in enumerate(clips):
        features = log_mel(clip)[None]
        whole[k] = heard(features)
        short[k] = heard(np.ascontiguousarray(features[:, :, -window_frames(len(clip)) :]))
    gap = log_odds(whole) - log_odds(short)
    fit = float(gap[~held].mean())
    by_voice = gap[~held].reshape(len(voices_here()), -1).mean(axis=1)  # each voice's turns are together
    print(
        f"log-odds shift fit on {np.sum(~held)} turns: {fit:+.2f} (server: {SHORT_SHIFT:+.2f}); by voice "
        + ", ".join(f"{b:+.2f}" for b in by_voice)
    )
    moved = np.array([shifted(p, SHORT_SHIFT) for p in short])
    for name, mask in (("tuned on", ~held), ("held out", held)):
        print(f"{name} ({mask.sum()} turns):")
        for label, p in (("8-s window", whole), ("short window", short), ("short window, shifted", moved)):
            flips = int(np.sum((p[mask] >= 0.5) != (whole[mask] >= 0.5)))
            print(f"  {label:22} {scores(p[mask], y[mask])}; against the 8-s window {flips} flipped")
    rng, d_auc, d_acc = np.random.default_rng(0), [], []
    held_out = np.nonzero(held)[0]
    for _ in range(1000):
        pick = rng.choice(held_out, len(held_out))
        d_auc.append(auc(moved[pick], y[pick]) - auc(whole[pick], y[pick]))
        d_acc.append(np.mean((moved[pick] >= 0.5) == y[pick]) - np.mean((whole[pick] >= 0.5) == y[pick]))
    print(
        "held out, shifted short less 8-s window, 95 % bootstrap intervals: AUC "
        + " .. ".join(f"{x:+.3f}" for x in np.percentile(d_auc, [2.5, 97.5]))
        + ", accuracy "
        + " .. ".join(f"{x:+.3f}" for x in np.percentile(d_acc, [2.5, 97.5]))
    )


def logits() -> None:
    """The server's graph (attention logits in float) against the file's arithmetic and against its weights
    in float, on the 540 turns of `wider_set`."""
    clips, y, _ = wider_set()
    features = [log_mel(a)[None] for a in clips]
    shipped = any_length(model_path().read_bytes(), float_logits=False)
    graphs = {
        "int8 as shipped": shipped,
        "attention logits in float": any_length(model_path().read_bytes()),
        "weights and activations in float": as_float(shipped),
    }
    heard: dict[str, np.ndarray] = {}
    for name, graph in graphs.items():
        session, began = inference_session(graph), time.thread_time()
        runs = (session.run(None, {"input_features": f})[0] for f in features)
        p = np.array([float(np.asarray(out).ravel()[0]) for out in runs])
        ms = (time.thread_time() - began) / len(features) * 1000
        heard[name] = p
        print(f"{name:34} {scores(p, y)}, {ms:.1f} ms a decision")
    reference = heard["int8 as shipped"]
    for name in list(graphs)[1:]:
        change = np.abs(heard[name] - reference)
        flips = int(np.sum((heard[name] >= 0.5) != (reference >= 0.5)))
        print(f"{name} against int8 as shipped: mean change {change.mean():.3f}, {flips} of {len(y)} flipped")
    rng, diffs = np.random.default_rng(0), []
    for _ in range(500):
        pick = rng.choice(len(y), len(y))
        ranked = (heard["attention logits in float"][pick], reference[pick])
        diffs.append(auc(ranked[0], y[pick]) - auc(ranked[1], y[pick]))
    low, high = np.percentile(diffs, [2.5, 97.5])
    print(f"AUC, logits in float less as shipped: 95 % bootstrap interval {low:+.3f} .. {high:+.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logits", action="store_true", help="only the float-logits graph on 540 turns")
    parser.add_argument("--shift", action="store_true", help="only the short window's log-odds shift")
    args = parser.parse_args()
    if args.logits or args.shift:
        (logits if args.logits else shift)()
        return
    clips, labels = turns()
    features = [log_mel(a) for a in clips]
    rewritten = any_length(model_path().read_bytes(), float_logits=False)
    int8, floating, groups, server = (
        inference_session(g)
        for g in (rewritten, as_float(rewritten), grouped(rewritten), any_length(model_path().read_bytes()))
    )

    def run(session: Any, feed: dict[str, np.ndarray]) -> float:
        return float(np.asarray(session.run(None, feed)[0]).reshape(-1)[0])

    def whole(session: Any) -> Callable[[int], dict[str, np.ndarray]]:
        return lambda k: {"input_features": features[k][None]}

    def short(k: int) -> dict[str, np.ndarray]:
        return {"input_features": np.ascontiguousarray(features[k][None, :, -window_frames(len(clips[k])) :])}

    def heard(session: Any, feed: Callable[[int], dict[str, np.ndarray]]) -> tuple[np.ndarray, float]:
        out, began = [], time.thread_time()
        for k in range(len(clips)):
            out.append(run(session, feed(k)))
        return np.array(out), (time.thread_time() - began) / len(clips) * 1000

    reference, ms = heard(int8, whole(int8))
    float_whole, _ = heard(floating, whole(floating))

    def row(name: str, p: np.ndarray, cost: float, against: np.ndarray = reference) -> None:
        change = np.abs(p - against)
        flips = int(np.sum((p >= 0.5) != (against >= 0.5)))
        print(
            f"{name:46} mean change {change.mean():.3f} (max {change.max():.2f}), {flips:2d} of {len(p)} "
            f"flipped, accuracy {np.mean((p >= 0.5) == labels):.2f}, {cost:.1f} ms a decision"
        )

    print("against the model's 8-s window (int8, as shipped):")
    row("the 8-s window", reference, ms)
    row("the short window", *heard(int8, short))
    row("logits in float (the server), the 8-s window", *heard(server, whole(server)))
    row("logits in float (the server), the short window", *heard(server, short))
    row("float, the 8-s window", float_whole, heard(floating, whole(floating))[1])
    for group in (1, 2, 4, 8):

        def feed(k: int, group: int = group) -> dict[str, np.ndarray]:
            return grouped_inputs(clips[k], features[k], group)

        row(f"grouped padding, {group} position(s) a token", *heard(groups, feed))
    print("float against float's own 8-s window:")
    row("float, the short window", *heard(floating, short), against=float_whole)


if __name__ == "__main__":
    main()
