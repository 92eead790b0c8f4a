"""Wire protocol v1: the one place messages are encoded and decoded.

A message is multipart: an empty delimiter frame, one msgpack map (the header), then
one raw frame per array listed in header["arrays"] as {"name", "dtype", "shape"}
(little-endian, C order).  docs/protocol.md is the normative description.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import msgpack
import numpy as np

VERSION = 1

# Array dtypes a peer may send, by NumPy's little-endian notation.
DTYPES = {s: np.dtype(s) for s in
          ("<f4", "<f8", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "|b1")}
# Spellings that mean the same single-byte types.
DTYPES.update({"<i1": np.dtype("i1"), "<u1": np.dtype("u1"), "<b1": np.dtype("?"),
               "|b": np.dtype("?")})
# `snapshot` (uint8) travels only on the snapshots socket: a model version for followers.
ARRAY_NAMES = ("x", "y", "w", "ids", "tags", "snapshot")
# The `split` a train message may name (docs/protocol.md section 4): "auto" lets the
# daemon divide rows by their hash, the others send every row of the message there.
TRAIN_SPLITS = ("auto", "train", "train_dev", "dev", "test")
MAX_NDIM = 2
# Fixed bounds on a header's shape (docs/protocol.md section 8).
MAX_DEPTH = 8
MAX_MAP_LEN = 256
MAX_ARRAY_LEN = 1024


@dataclass(frozen=True)
class Limits:
    """Sizes past which a message is refused with `too_large` before it is parsed."""

    max_header_bytes: int = 64 * 1024
    max_array_bytes: int = 64 * 1024 * 1024
    max_message_bytes: int = 256 * 1024 * 1024
    max_rows: int = 1_000_000
    max_frames: int = 2 + len(ARRAY_NAMES)


DEFAULT_LIMITS = Limits()


class ProtocolError(ValueError):
    """A message that breaks the protocol; `code` is the stable error code sent back."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


# Stable error codes and what they mean (docs/protocol.md lists the same).
ERROR_CODES = {
    "bad_frame": "the multipart framing is wrong: no empty delimiter, no header frame",
    "bad_header": "the header is not a msgpack map, or a field is missing or of the wrong type",
    "bad_version": "header 'v' is not a version this daemon speaks",
    "unknown_op": "header 'op' names no operation of this socket",
    "bad_array": "an array's description or its frame is wrong: dtype, shape, byte size, "
                 "unknown or repeated name, missing or extra frames",
    "shape_mismatch": "arrays disagree with each other or with the model (rows, features, outputs)",
    "non_finite": "an input holds NaN or Inf",
    "out_of_range": "an input or regression target is beyond the configured max_abs_value",
    "bad_label": "a label is not valid for the task (out of range, not 0/1, ...)",
    "bad_tag": "a tag code is not -1 or an index of the header's tag_names, or a multi-hot tag is not 0/1",
    "too_large": "the message, header or an array is over a configured limit",
    "busy": "the daemon has too many control operations waiting; retry later",
    "not_ready": "there is no model yet: the first training batch fixes its size and task",
    "unsupported": "the op cannot run in this daemon's mode (rollback or freeze on a data-parallel rank)",
    "unknown_id": "a delayed-label id is not (or no longer) stored",
    "bad_setting": "a control 'set' names an unknown setting or gives a bad value",
    "internal": "the daemon failed on a valid request; it keeps running (see its log)",
}


@dataclass
class Message:
    """A decoded message: its header map and its arrays by name."""

    header: dict
    arrays: dict = field(default_factory=dict)

    @property
    def op(self):
        return self.header.get("op")


def _frame_bytes(frame):
    """bytes-like view of a frame, whether pyzmq gave bytes or a zmq.Frame."""
    return frame.buffer if hasattr(frame, "buffer") else frame


def _array_frame(arr):
    arr = np.asarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr)


def encode(header, arrays=None):
    """Frames for a message: [b"", msgpack(header), *array buffers].

    header: dict without "arrays" (filled in here); "v" defaults to 1.
    arrays: {name: ndarray} in the order they should travel.
    The array frames are the arrays' own memory (send them with copy=False).
    """
    header = dict(header)
    header.setdefault("v", VERSION)
    frames_out = []
    specs = []
    for name, arr in (arrays or {}).items():
        arr = _array_frame(arr)
        specs.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape)})
        frames_out.append(memoryview(arr.reshape(-1)).cast("B") if arr.size else b"")
    if specs:
        header["arrays"] = specs
    return [b"", msgpack.packb(header, use_bin_type=True), *frames_out]


def _unpack_header(raw, limits):
    if len(raw) > limits.max_header_bytes:
        raise ProtocolError("too_large", f"header is {len(raw)} bytes, the limit is {limits.max_header_bytes}")
    try:
        header = msgpack.unpackb(
            raw, raw=False, strict_map_key=True, use_list=True,
            max_str_len=limits.max_header_bytes, max_bin_len=limits.max_header_bytes,
            max_array_len=MAX_ARRAY_LEN, max_map_len=MAX_MAP_LEN, max_ext_len=0)
    except msgpack.exceptions.StackError:
        # The C unpacker's own depth limit (far below any recursion limit): a small header
        # of 60,000 nested arrays ends here, not in a crash.
        raise ProtocolError("bad_header", f"header nests deeper than {MAX_DEPTH} levels") from None
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError("bad_header", f"header is not valid msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_header", f"header must be a msgpack map, got {type(header).__name__}")
    return header


def _check_depth(value, depth=0, limit=MAX_DEPTH):
    if depth > limit:
        raise ProtocolError("bad_header", f"header nests deeper than {limit} levels")
    if isinstance(value, dict):
        for v in value.values():
            _check_depth(v, depth + 1, limit)
    elif isinstance(value, list):
        for v in value:
            _check_depth(v, depth + 1, limit)


def _array_specs(header, n_frames):
    specs = header.get("arrays", [])
    if not isinstance(specs, list):
        raise ProtocolError("bad_header", "header 'arrays' must be a list of {name, dtype, shape}")
    if len(specs) != n_frames:
        raise ProtocolError("bad_array", f"header lists {len(specs)} arrays but {n_frames} array "
                                         "frames came")
    seen = set()
    out = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or set(spec) != {"name", "dtype", "shape"}:
            raise ProtocolError("bad_array", f"arrays[{i}] must be a map with exactly name, dtype, shape")
        name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
        if name not in ARRAY_NAMES:
            raise ProtocolError("bad_array", f"arrays[{i}] has unknown name {name!r}; "
                                             f"known: {', '.join(ARRAY_NAMES)}")
        if name in seen:
            raise ProtocolError("bad_array", f"array {name!r} is listed twice")
        seen.add(name)
        if not isinstance(dtype, str) or dtype not in DTYPES:   # a list or map is no key of DTYPES
            raise ProtocolError("bad_array", f"array {name!r} has dtype {dtype!r}; allowed: "
                                             f"{', '.join(sorted(DTYPES))}")
        if (not isinstance(shape, list) or not 1 <= len(shape) <= MAX_NDIM
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise ProtocolError("bad_array", f"array {name!r} shape must be 1 or 2 non-negative ints, "
                                             f"got {shape!r}")
        out.append((name, DTYPES[dtype], tuple(shape)))
    return out


def decode(frames, limits=DEFAULT_LIMITS, reply=False):
    """Parse the frames after the peer identity: [b"", header, *arrays] -> Message.

    Checks framing, sizes against `limits`, header types, "v" and each array's dtype,
    shape and byte size; raises ProtocolError with the matching code.  Array contents
    (NaN, labels) and the op's own fields are the receiver's to check.  A request
    names its "op"; a reply (reply=True) says "ok" instead.
    Arrays are zero-copy, read-only views of the frames.
    """
    if len(frames) < 2 or len(_frame_bytes(frames[0])) != 0:
        raise ProtocolError("bad_frame", "a message is an empty delimiter frame, a header frame, "
                                         "then array frames")
    if len(frames) > limits.max_frames:
        raise ProtocolError("bad_array", f"{len(frames) - 2} array frames; at most "
                                         f"{limits.max_frames - 2} arrays are known")
    total = sum(len(_frame_bytes(f)) for f in frames)
    if total > limits.max_message_bytes:
        raise ProtocolError("too_large", f"message is {total} bytes, the limit is {limits.max_message_bytes}")
    header = _unpack_header(bytes(_frame_bytes(frames[1])), limits)
    _check_depth(header)
    if header.get("v") != VERSION:
        raise ProtocolError("bad_version", f"header 'v' must be {VERSION}, got {header.get('v')!r}")
    if reply:
        if not isinstance(header.get("ok"), bool):
            raise ProtocolError("bad_header", "reply header 'ok' must be true or false")
    elif not isinstance(header.get("op"), str):
        raise ProtocolError("bad_header", "header 'op' must be a string")
    arrays = {}
    for (name, dtype, shape), frame in zip(_array_specs(header, len(frames) - 2), frames[2:]):
        buf = _frame_bytes(frame)
        expected = dtype.itemsize   # a Python product: np.prod costs more than the rest of decode
        for d in shape:
            expected *= d
        if expected > limits.max_array_bytes:
            raise ProtocolError("too_large", f"array {name!r} is {expected} bytes, the limit is "
                                             f"{limits.max_array_bytes}")
        if shape[0] > limits.max_rows:
            raise ProtocolError("too_large", f"array {name!r} has {shape[0]} rows, the limit is "
                                             f"{limits.max_rows}")
        if len(buf) != expected:
            raise ProtocolError("bad_array", f"array {name!r} {dtype.str}{list(shape)} needs {expected} "
                                             f"bytes, its frame has {len(buf)}")
        arrays[name] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    header.pop("arrays", None)
    return Message(header, arrays)


def ok(**fields):
    """A success reply header."""
    return {"v": VERSION, "ok": True, **fields}


def error(code, message, **echo):
    """An error reply header; `echo` carries "id" or "seq" when they are known."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    return {"v": VERSION, "ok": False, **echo, "error": {"code": code, "message": message}}
