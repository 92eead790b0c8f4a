"""A bounded fuzz run against a live daemon: 10,000 random and mutated messages over the
ingest, predict and control sockets.  Every one gets exactly one reply, a well-formed
protocol reply that is ok or carries a stable error code (never `internal`); the
daemon lives on, healthy, with nothing in its log; and the model does not change.

Valid messages are part of the corpus and some mutations stay valid, so some replies
are rightly ok.  To keep "the model does not change" exact, training is frozen for
the run (frozen rows pass every ingest check and are counted, but take no step), the
control ops are those that change no model (status, set, checkpoint, gradcheck: no
mutation here can spell freeze, unfreeze, rollback or shutdown, and the test checks
that every ok control reply answered one of the four), and the only setting the corpus
names is lr, whose final value must be the one the last accepted `set` gave.

Framing: the ROUTER sockets see the peer's identity, then what the peer sent.  Every
such message is answered, a missing or non-empty delimiter with `bad_frame`; the only
message no peer can be answered for is one with no frames at all, which ZeroMQ does not
send, so the fuzzer sends a lone empty frame in its place.
"""
from __future__ import annotations

import pytest

import string
import time
from collections import Counter

import msgpack
import numpy as np
import zmq

from learnd.clients import protocol
from learnd.clients.client import Control, Predictor
from tests.conftest import ALL_MODES
from tests.integration.test_bad_input import (  # noqa: F401  (busy_daemon: a fixture)
    MAX_ARRAY_BYTES, barrage, busy_daemon, raw, train, train_on_digits)

SEED = 20240611
MESSAGES = {"ingest": 4000, "predict": 3500, "control": 2500}
IN_FLIGHT = 32                # messages outstanding per socket, one per DEALER
REPLY_TIMEOUT_S = 15.0        # one message's reply
RUN_DEADLINE_S = 150.0        # the whole barrage
SAFE_CONTROL_OPS = ("status", "set", "checkpoint", "gradcheck")
DELAYED_IDS = np.arange(9000, 9004, dtype=np.int64)

# Strings a mutation may put into a field: the protocol's own words (no control op that
# changes the model) and arbitrary ones.
WORDS = ["train", "predict", *SAFE_CONTROL_OPS, "auto", "dev", "test", "label", "proba", "value",
         "multiclass", "binary", "lr", "x", "y", "w", "ids", "<f4", "<f8", "<i8", "|b1", "", "\x00"]
FIELDS = ["v", "op", "arrays", "id", "seq", "producer", "split", "output", "settings", "task", "n_outputs"]
EDGE_INTS = [0, 1, -1, 2, 63, 64, 65, 2 ** 31, 2 ** 32 + 1, 2 ** 63 - 1, -2 ** 63, 2 ** 64 - 1]
EDGE_FLOATS = [float("nan"), float("inf"), float("-inf"), -0.0, 0.5, 1e-3, 1e308, 5e-324, 1e15, 1e16]


def wild(rng, depth=0):
    """A random msgpack value, mostly small, sometimes nested past decode's depth limit."""
    kind = rng.integers(0, 12 if depth < 2 else 9)
    if kind == 0:
        return None
    if kind == 1:
        return bool(rng.integers(2))
    if kind == 2:
        return int(rng.integers(-5, 100))
    if kind == 3:
        return EDGE_INTS[rng.integers(len(EDGE_INTS))]
    if kind == 4:
        return EDGE_FLOATS[rng.integers(len(EDGE_FLOATS))]
    if kind == 5:
        return "".join(rng.choice(list(string.printable), rng.integers(0, 10)))
    if kind == 6:
        return WORDS[rng.integers(len(WORDS))]
    if kind == 7:
        return rng.bytes(int(rng.integers(0, 12)))
    if kind == 8:
        return float(rng.standard_normal() * 10.0 ** rng.integers(-3, 40))
    if kind == 9:
        return [wild(rng, depth + 1) for _ in range(rng.integers(0, 4))]
    if kind == 10:
        return {str(wild(rng, 2)) if rng.random() < 0.5 else WORDS[rng.integers(len(WORDS))]:
                wild(rng, depth + 1) for _ in range(rng.integers(0, 4))}
    value = 1
    for _ in range(12):
        value = [value]
    return value


def header_of(frames):
    """The header map of a [b"", header, ...] message, or None once it no longer parses."""
    if len(frames) < 2 or frames[0] != b"":
        return None
    try:
        header = msgpack.unpackb(frames[1], raw=False, strict_map_key=False)
    except Exception:  # msgpack raises several types; the header is broken, leave it be
        return None
    return header if isinstance(header, dict) else None


def with_header(frames, header):
    return [frames[0], msgpack.packb(header, use_bin_type=True), *frames[2:]]


def mutate(frames, rng):
    """One change of the kind a broken or hostile peer makes, to a copy of frames."""
    frames = [bytes(f) for f in frames]
    kind = rng.integers(0, 14)
    i = int(rng.integers(len(frames))) if frames else 0
    header = header_of(frames)
    specs = header.get("arrays") if header is not None else None
    specs = specs if isinstance(specs, list) and specs and all(isinstance(s, dict) for s in specs) else None
    if kind == 0 and frames and frames[i]:                      # bit flips
        b = bytearray(frames[i])
        for bit in rng.integers(0, 8 * len(b), rng.integers(1, 4)):
            b[bit // 8] ^= 1 << (bit % 8)
        frames[i] = bytes(b)
    elif kind == 1 and frames:                                  # truncation
        frames[i] = frames[i][:rng.integers(0, len(frames[i]) + 1)]
    elif kind == 2 and frames:                                  # extension
        frames[i] = frames[i] + rng.bytes(int(rng.integers(1, 24)))
    elif kind == 3:                                             # a frame inserted
        frames.insert(int(rng.integers(len(frames) + 1)), rng.bytes(int(rng.integers(0, 40))))
    elif kind == 4 and len(frames) > 1:                         # a frame deleted
        del frames[i]
    elif kind == 5 and len(frames) > 1:                         # two frames swapped
        j = int(rng.integers(len(frames)))
        frames[i], frames[j] = frames[j], frames[i]
    elif kind in (6, 7) and header is not None:                 # a field replaced
        keys = list(header) + FIELDS
        header[keys[rng.integers(len(keys))]] = wild(rng)
        frames = with_header(frames, header)
    elif kind == 8 and header:                                  # a field removed
        del header[list(header)[rng.integers(len(header))]]
        frames = with_header(frames, header)
    elif kind == 9 and specs:                                   # an array description broken
        spec = specs[rng.integers(len(specs))]
        spec[["name", "dtype", "shape", "extra"][rng.integers(4)]] = wild(rng)
        frames = with_header(frames, header)
    elif kind == 10 and specs:                                  # an array's dtype changed
        spec = specs[rng.integers(len(specs))]
        names = sorted(protocol.DTYPES) + [">f4", "<f2", "<c8", "O"]
        spec["dtype"] = names[rng.integers(len(names))]
        frames = with_header(frames, header)
    elif kind == 11 and specs:                                  # an array's shape changed
        spec = specs[rng.integers(len(specs))]
        shape = spec.get("shape") if isinstance(spec.get("shape"), list) else [1]
        choice = rng.integers(4)
        if choice == 0 and shape:
            shape[rng.integers(len(shape))] = EDGE_INTS[rng.integers(len(EDGE_INTS))]
        elif choice == 1:
            shape = shape[::-1]
        elif choice == 2:
            shape = shape + [int(rng.integers(0, 3))]
        else:
            shape = shape[:-1]
        spec["shape"] = shape
        frames = with_header(frames, header)
    elif kind in (12, 13) and len(frames) > 2:                  # an array's bytes replaced
        j = int(rng.integers(2, len(frames)))
        b = bytearray(frames[j])
        if b:
            k = rng.integers(len(b))
            width = min(len(b) - k, 8)
            b[k:k + width] = rng.bytes(int(width))
        frames[j] = bytes(b)
    return frames


def random_frames(rng):
    """Frames with no structure at all; half start with the empty delimiter."""
    frames = [rng.bytes(int(rng.integers(0, 200))) for _ in range(rng.integers(1, 6))]
    if rng.random() < 0.5:
        frames[0] = b""
    if rng.random() < 0.3 and len(frames) > 1:
        frames[1] = msgpack.packb(wild(rng), use_bin_type=True)
    return frames


def corpus(Xte, lr):
    """Valid messages of each socket's ops, and the hand-written bad ones, to mutate."""
    rows, labels = Xte[:8].astype(np.float32), np.arange(8) % 10
    ingest = [raw(train(seq=100 + k, split=s), {"x": rows, "y": labels})
              for k, s in enumerate(("train", "dev", "test", "auto"))]
    ingest += [raw(train(seq=200), {"x": rows, "y": labels, "w": np.linspace(0.5, 2, 8)}),
               raw(train(seq=201), {"x": rows[:2].astype(np.float64), "y": labels[:2], "ids": DELAYED_IDS[:2]}),
               raw(train(seq=202), {"ids": DELAYED_IDS, "y": labels[:4]}),
               raw(train(seq=203), {"x": rows, "y": np.eye(10, dtype=np.int64)[labels]})]
    predict = [raw({"op": "predict", "id": k, "output": out}, {"x": rows[:k + 1]})
               for k, out in enumerate(("label", "proba", "value"))]
    predict += [raw({"op": "predict", "id": "delayed"}, {"x": rows[:4], "ids": DELAYED_IDS}),
                raw({"op": "predict"}, {"x": rows.astype(np.float64)})]
    control = [raw({"op": op, "id": op}) for op in ("status", "checkpoint", "gradcheck")]
    control += [raw({"op": "set", "id": "lr", "settings": {"lr": lr}})]
    by_socket = {"ingest": ingest, "predict": predict, "control": control}
    for name, frames, _ in barrage():
        by_socket[name].append(frames)
    return {name: [[bytes(f) for f in frames] for frames in msgs] for name, msgs in by_socket.items()}


def with_seq(frames, seq):
    """frames with header "seq" set to seq, where there is one to set."""
    header = header_of(frames)
    if header is None or "seq" not in header:
        return frames
    return with_header(frames, {**header, "seq": seq})


def messages(rng, base, count, fresh_seqs=False):
    """`count` messages: a tenth valid as they are, a tenth random, the rest mutated.

    fresh_seqs (ingest): most messages get a seq of their own first, so that the
    daemon checks them instead of acknowledging a resend of an earlier (producer, seq).
    """
    out = []
    for k in range(count):
        frames = base[rng.integers(len(base))]
        if fresh_seqs and rng.random() < 0.9:
            frames = with_seq(frames, 10_000 + k)
        r = rng.random()
        if r < 0.1:
            pass
        elif r < 0.2:
            frames = random_frames(rng)
        else:
            for _ in range(rng.integers(1, 4)):
                frames = mutate(frames, rng)
        out.append(frames if frames else [b""])     # ZeroMQ sends no zero-frame message
    return out


class Slots:
    """IN_FLIGHT DEALERs on one socket, each with at most one message outstanding, so
    each reply is matched to its message without anything inside either."""

    def __init__(self, ctx, endpoint, todo):
        self.todo = list(reversed(todo))
        self.socks = []
        for _ in range(IN_FLIGHT):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(endpoint)
            self.socks.append(s)
        self.outstanding = {}      # socket -> (frames, sent at)

    def fill(self):
        for s in self.socks:
            if s not in self.outstanding and self.todo:
                frames = self.todo.pop()
                s.send_multipart(frames)
                self.outstanding[s] = (frames, time.monotonic())

    def close(self):
        for s in self.socks:
            s.close()


def run_barrage(endpoints, plan, deadline_s):
    """Send every planned message; returns {socket: [(frames, reply frames)]} and the
    messages that went unanswered."""
    ctx = zmq.Context()
    slots = {name: Slots(ctx, endpoints[name], msgs) for name, msgs in plan.items()}
    owner = {s: name for name, sl in slots.items() for s in sl.socks}
    answered = {name: [] for name in plan}
    unanswered = []
    poller = zmq.Poller()
    for s in owner:
        poller.register(s, zmq.POLLIN)
    deadline = time.monotonic() + deadline_s
    try:
        while time.monotonic() < deadline:
            for sl in slots.values():
                sl.fill()
            if not any(sl.outstanding for sl in slots.values()):
                break
            for s, _ in poller.poll(100):
                sl = slots[owner[s]]
                reply = s.recv_multipart()
                frames, _ = sl.outstanding.pop(s)
                answered[owner[s]].append((frames, reply))
            now = time.monotonic()
            for name, sl in slots.items():
                for s, (frames, sent) in list(sl.outstanding.items()):
                    if now - sent > REPLY_TIMEOUT_S:
                        unanswered.append((name, frames))
                        del sl.outstanding[s]
                        poller.unregister(s)
                        sl.socks.remove(s)
                        s.close()
        for name, sl in slots.items():
            unanswered += [(name, frames) for frames, _ in sl.outstanding.values()]
            unanswered += [(name, frames) for frames in sl.todo]
    finally:
        for sl in slots.values():
            sl.close()
        ctx.term()
    return answered, unanswered


def request_of(frames):
    """The sent message decoded as the daemon would, or None if it is not valid protocol."""
    try:
        return protocol.decode(frames, protocol.Limits(max_array_bytes=MAX_ARRAY_BYTES))
    except protocol.ProtocolError:
        return None


def check_reply(name, frames, reply):
    """The reply is a well-formed protocol reply; returns its code ("ok" on success)."""
    message = protocol.decode(reply, reply=True)
    h = message.header
    if not h["ok"]:
        assert set(h["error"]) == {"code", "message"} and h["error"]["message"], h
        assert h["error"]["code"] in protocol.ERROR_CODES, h
        return h["error"]["code"]
    sent = request_of(frames)
    assert sent is not None, (name, h)      # only a valid message is answered ok
    if name == "ingest":
        assert sent.op == "train" and isinstance(h["accepted"], int) and h["seq"] == sent.header["seq"]
    elif name == "predict":
        assert sent.op == "predict" and isinstance(h["model_version"], int)
        assert message.arrays["y"].shape[0] == sent.arrays["x"].shape[0]
    else:
        assert sent.op in SAFE_CONTROL_OPS and isinstance(h["result"], dict), (sent.op, h)
    return "ok"


@pytest.mark.parametrize("daemon_mode", ALL_MODES)   # the predict path behind the proxy too
def test_ten_thousand_fuzzed_messages_crash_nothing_and_change_nothing(busy_daemon, figures):
    d = busy_daemon
    Xte, before = train_on_digits(d)
    with Control(d.control, timeout=180, retries=0) as c:
        # On a cold Numba cache the first gradcheck compiles the float64 kernels, which
        # holds the trainer for longer than the barrage waits for a reply: do it first.
        c.gradcheck()
        c.freeze()
        status_before = c.status()
    metrics_before = d.metrics()
    lr_before = status_before["learning_rate"]

    rng = np.random.default_rng(SEED)
    base = corpus(Xte, lr_before)
    plan = {name: messages(rng, base[name], n, fresh_seqs=name == "ingest") for name, n in MESSAGES.items()}
    t0 = time.monotonic()
    answered, unanswered = run_barrage(d.endpoints, plan, RUN_DEADLINE_S)
    elapsed = time.monotonic() - t0

    assert unanswered == [], f"{len(unanswered)} messages got no reply, e.g. {unanswered[:3]}"
    codes = {name: Counter() for name in plan}
    accepted_rows, lrs_set, ok_ops = 0, set(), Counter()
    for name, pairs in answered.items():
        assert len(pairs) == MESSAGES[name]
        for frames, reply in pairs:
            code = check_reply(name, frames, reply)
            codes[name][code] += 1
            header = protocol.decode(reply, reply=True).header
            if name == "ingest" and code == "ok":
                accepted_rows += header["accepted"]
            if code == "ok":
                ok_ops[request_of(frames).op] += 1
            if name == "control" and code == "ok" and "lr" in header["result"]:
                lrs_set.add(float(header["result"]["lr"]))
    total = sum(codes.values(), Counter())
    assert total["internal"] == 0, "the daemon failed on some message (see its log)"

    assert d.proc.poll() is None and d.http("/healthz")[0] == 200
    with Control(d.control) as c:
        d.wait_until(lambda: c.status()["queue_depth"] == 0, what="the queue drained")
        status = c.status()
    with Predictor(d.predict) as p:
        after = p.predict(Xte, output="proba")
    assert after.model_version == before.model_version
    assert np.array_equal(after.y, before.y)
    for key in ("samples_trained", "batches_trained", "nonfinite_steps", "task", "input_dim", "n_outputs"):
        assert status[key] == status_before[key], key
    # Accepted sets ran in the order the daemon read them, which the slots do not fix:
    # the last one's value is one of theirs; with none, lr is untouched.
    assert status["learning_rate"] in (lrs_set or {lr_before})

    metrics = d.metrics()

    def delta(key):
        return metrics.get(key, 0.0) - metrics_before.get(key, 0.0)

    for code, count in total.items():
        if code != "ok":
            assert delta(f"learnd_rejected_total{{reason={code}}}") == count, code
    rows_in = sum(delta(f"learnd_ingest_rows_total{{split={s}}}") for s in ("train", "train_dev", "dev", "test"))
    assert rows_in == accepted_rows
    assert "Traceback" not in d.log() and "Warning:" not in d.log()

    def reached_the_frozen_trainer():
        # Every accepted training row is taken by the trainer, which steps on none of them
        # (rows wait for a full batch, or for the linger to pass).
        m, st = d.metrics(), c.status()
        return (m["learnd_ingest_rows_total{split=train}"] - metrics_before["learnd_ingest_rows_total{split=train}"]
                == m["learnd_frozen_rows_total"] - metrics_before["learnd_frozen_rows_total"]
                + st["rows_waiting"] - status_before["rows_waiting"])
    with Control(d.control) as c:
        d.wait_until(reached_the_frozen_trainer, timeout=10, what="accepted rows at the frozen trainer")

    for name in plan:
        figures(f"{name}: {MESSAGES[name]} sent, replies {dict(sorted(codes[name].items()))}")
    figures(f"all: {sum(MESSAGES.values())} messages in {elapsed:.1f} s, replies {dict(sorted(total.items()))}, "
            f"ok by op {dict(sorted(ok_ops.items()))}, {accepted_rows} rows accepted (frozen), "
            f"0 unanswered, 0 internal, daemon alive")
