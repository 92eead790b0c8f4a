"""Properties of the wire codec, checked on generated messages: what encode writes,
decode gives back; whatever bytes arrive, decode returns a Message or raises a
ProtocolError with a stable code, never anything else."""
from __future__ import annotations

import msgpack
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from learnd.clients import protocol
from learnd.clients.protocol import ARRAY_NAMES, DTYPES, Limits, ProtocolError, decode, encode

# Fixed example counts and a derandomized search: CI time is bounded and a failure
# reproduces on every run; no deadline, so a loaded machine does not flake.
EXAMPLES = 400
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ALLOWED_DTYPES = sorted({d.str: d for d in DTYPES.values()}.values(), key=lambda d: d.str)

# -- generators ---------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=12) | st.binary(max_size=12))


def nested(depth):
    """msgpack values nesting at most `depth` levels (decode refuses deeper than 8)."""
    if depth == 0:
        return scalars
    inner = nested(depth - 1)
    return scalars | st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)


msgpack_values = nested(3)
# Any msgpack value, NaN included: what a peer may put where a field is expected.
wild_values = nested(2) | st.floats()

header_fields = st.dictionaries(st.text(max_size=10).filter(lambda k: k not in ("v", "op", "arrays")),
                                msgpack_values, max_size=6)
shapes = hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=6)


@st.composite
def arrays_by_name(draw, names=ARRAY_NAMES):
    """{name: ndarray} of distinct known names in a drawn order, any allowed dtype."""
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
    return {name: draw(hnp.arrays(draw(st.sampled_from(ALLOWED_DTYPES)), draw(shapes))) for name in chosen}


@st.composite
def valid_messages(draw):
    """(header without "arrays", arrays, frames) of a message decode must take."""
    header = {"op": draw(st.text(max_size=12)), **draw(header_fields)}
    arrays = draw(arrays_by_name())
    return header, arrays, [bytes(f) for f in encode(header, arrays)]


def _header_of(frames):
    """The header map of frames, or None once earlier mutations have broken it."""
    try:
        header = msgpack.unpackb(frames[1], raw=False)
    except Exception:  # any of msgpack's several errors: the header is already broken
        return None
    return header if isinstance(header, dict) else None


def _has_specs(header):
    return (header is not None and isinstance(header.get("arrays"), list) and header["arrays"]
            and all(isinstance(s, dict) for s in header["arrays"]))


def _repack(frames, header):
    return [frames[0], msgpack.packb(header, use_bin_type=True), *frames[2:]]


@st.composite
def mutation(draw, frames):
    """One change to a message's frames, of the kinds a broken or hostile peer makes."""
    frames = list(frames)
    kind = draw(st.sampled_from(("flip", "truncate", "extend", "insert", "delete", "swap",
                                 "field", "spec", "shape", "dtype")))
    i = draw(st.integers(0, len(frames) - 1)) if frames else 0
    if kind == "flip" and frames and frames[i]:
        bit = draw(st.integers(0, 8 * len(frames[i]) - 1))
        b = bytearray(frames[i])
        b[bit // 8] ^= 1 << (bit % 8)
        frames[i] = bytes(b)
    elif kind == "truncate" and frames:
        frames[i] = frames[i][:draw(st.integers(0, len(frames[i])))]
    elif kind == "extend" and frames:
        frames[i] = frames[i] + draw(st.binary(min_size=1, max_size=16))
    elif kind == "insert":
        frames.insert(draw(st.integers(0, len(frames))), draw(st.binary(max_size=32)))
    elif kind == "delete" and frames:
        del frames[i]
    elif kind == "swap" and len(frames) >= 2:
        j = draw(st.integers(0, len(frames) - 1))
        frames[i], frames[j] = frames[j], frames[i]
    elif kind == "field" and len(frames) >= 2 and _header_of(frames) is not None:
        key = draw(st.sampled_from(("v", "op", "arrays", "id", "seq", "producer", "split", "output")))
        frames = _repack(frames, {**_header_of(frames), key: draw(wild_values)})
    elif kind in ("spec", "shape", "dtype") and len(frames) >= 2 and _has_specs(_header_of(frames)):
        header = _header_of(frames)
        frames = _repack(frames, {**header, "arrays": draw(_mutated_specs(header["arrays"], kind))})
    return frames


@st.composite
def _mutated_specs(draw, specs, kind):
    specs = [dict(s) for s in specs]
    s = specs[draw(st.integers(0, len(specs) - 1))]
    if kind == "shape":
        s["shape"] = draw(st.lists(st.integers(-3, 2 ** 40), max_size=3) | wild_values)
    elif kind == "dtype":
        s["dtype"] = draw(st.sampled_from(sorted(DTYPES) + ["<f2", ">f4", "O", "<c16", "|V8", ""]) | wild_values)
    else:
        field = draw(st.sampled_from(("name", "dtype", "shape", "extra")))
        s[field] = draw(wild_values)
    return specs


@st.composite
def mutated_messages(draw):
    _, _, frames = draw(valid_messages())
    for _ in range(draw(st.integers(1, 4))):
        frames = draw(mutation(frames))
    return frames


# -- properties ---------------------------------------------------------------------------

def same_array(a, b):
    """Equal dtype, shape and bytes: NaNs and signed zeros compare as they travel."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def decode_or_code(frames, **kwargs):
    """The Message, or the code of the ProtocolError; any other exception fails the test."""
    try:
        message = decode(frames, **kwargs)
    except ProtocolError as exc:
        assert exc.code in protocol.ERROR_CODES and exc.code != "internal", exc.code
        assert exc.message
        event(exc.code)
        return exc.code
    check_arrays_match_frames(message, frames)
    event("decoded")
    return message


def check_arrays_match_frames(message, frames):
    """Each decoded array is its frame: same order, same byte count, read-only."""
    assert len(message.arrays) == len(frames) - 2
    for arr, frame in zip(message.arrays.values(), frames[2:]):
        assert arr.nbytes == len(frame)
        assert arr.tobytes() == bytes(frame)
        assert not arr.flags.writeable
        assert 1 <= arr.ndim <= protocol.MAX_NDIM


@PROPERTY
@given(valid_messages())
def test_decode_gives_back_what_encode_wrote(message):
    header, arrays, frames = message
    decoded = decode(frames)
    assert decoded.header == {"v": 1, **header}
    assert list(decoded.arrays) == list(arrays)
    for name, arr in arrays.items():
        assert same_array(decoded.arrays[name], arr), name
    check_arrays_match_frames(decoded, frames)


@PROPERTY
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_random_frames_decode_or_fail_with_a_code(frames):
    decode_or_code(frames)
    decode_or_code(frames, reply=True)


@PROPERTY
@given(st.lists(st.binary(max_size=64), max_size=6), wild_values | msgpack_values)
def test_random_msgpack_headers_decode_or_fail_with_a_code(tail, value):
    frames = [b"", msgpack.packb(value, use_bin_type=True), *tail]
    decode_or_code(frames)
    decode_or_code(frames, reply=True)


@PROPERTY
@given(mutated_messages())
def test_mutated_messages_decode_or_fail_with_a_code(frames):
    decode_or_code(frames)
    decode_or_code(frames, reply=True)


SIZE_LIMITS = ("max_header_bytes", "max_message_bytes", "max_array_bytes", "max_rows")


def measured(header, arrays, frames):
    """The message's size by each limit: header bytes, total bytes, largest array, most rows."""
    return {"max_header_bytes": len(frames[1]),
            "max_message_bytes": sum(len(f) for f in frames),
            "max_array_bytes": max((a.nbytes for a in arrays.values()), default=0),
            "max_rows": max((a.shape[0] for a in arrays.values()), default=0)}


@PROPERTY
@given(valid_messages(), st.sampled_from(SIZE_LIMITS), st.integers(1, 64))
def test_a_message_over_any_limit_is_too_large_and_at_it_passes(message, limit, under):
    header, arrays, frames = message
    size = measured(header, arrays, frames)
    at = Limits(**size)
    assert isinstance(decode_or_code(frames, limits=at), protocol.Message)
    if size[limit] - under < 0:
        return
    over = Limits(**{**size, limit: size[limit] - under})
    assert decode_or_code(frames, limits=over) == "too_large"


@st.composite
def described_arrays(draw):
    """A header whose array descriptions hold any msgpack values where name, dtype and
    shape belong, each field independently valid or not, with one frame per description."""
    specs = []
    for _ in range(draw(st.integers(1, 3))):
        spec = {"name": draw(st.sampled_from(ARRAY_NAMES) | wild_values),
                "dtype": draw(st.sampled_from(sorted(DTYPES)) | wild_values),
                "shape": draw(st.lists(st.integers(0, 4), min_size=1, max_size=2) | wild_values)}
        if draw(st.integers(0, 9)) == 0:
            spec[draw(st.text(max_size=4))] = draw(wild_values)
        specs.append(spec)
    header = {"v": 1, "op": "train", "arrays": specs}
    return [b"", msgpack.packb(header, use_bin_type=True), *(draw(st.binary(max_size=40)) for _ in specs)]


@PROPERTY
@given(described_arrays())
def test_array_descriptions_of_any_values_decode_or_fail_with_a_code(frames):
    decode_or_code(frames)
