import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learnd.clients import protocol
from learnd.clients.protocol import Limits, ProtocolError, decode, encode


def test_round_trip_keeps_arrays_bit_for_bit():
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((5, 3)).astype(np.float32), "y": np.arange(5),
              "w": rng.random(5), "ids": np.arange(5, dtype=np.int64)}
    msg = decode(encode({"op": "train", "producer": "p", "seq": 3}, arrays))
    assert msg.header == {"v": 1, "op": "train", "producer": "p", "seq": 3}
    for name, arr in arrays.items():
        assert msg.arrays[name].dtype == arr.dtype and np.array_equal(msg.arrays[name], arr)


def test_big_endian_arrays_travel_little_endian():
    x = np.arange(6, dtype=">f8").reshape(2, 3)
    msg = decode(encode({"op": "predict"}, {"x": x}))
    assert msg.arrays["x"].dtype.str == "<f8" and np.array_equal(msg.arrays["x"], x)


def test_replies_need_ok_not_op():
    frames = encode(protocol.ok(seq=1, accepted=3))
    assert decode(frames, reply=True).header["accepted"] == 3
    with pytest.raises(ProtocolError) as err:
        decode(frames)
    assert err.value.code == "bad_header"


@pytest.mark.parametrize("frames, code", [
    ([], "bad_frame"),
    ([b"x", b"y"], "bad_frame"),
    ([b"", b"\xc1"], "bad_header"),
    ([b"", msgpack.packb({"v": 1, "op": "a", "k": 1}) + b"trailing"], "bad_header"),
    ([b"", msgpack.packb({"v": "1", "op": "a"})], "bad_version"),
    ([b"", msgpack.packb({"v": 1, "op": "a", "arrays": {"x": 1}})], "bad_header"),
    ([b"", msgpack.packb({"v": 1, "op": "a", "arrays": [{"name": "x", "dtype": "<f4", "shape": [2, 2, 2]}]}),
      b"\0" * 32], "bad_array"),
    ([b"", msgpack.packb({"v": 1, "op": "a", "arrays": [{"name": "x", "dtype": "O", "shape": [1]}]}),
      b"\0" * 8], "bad_array"),
    ([b"", msgpack.packb({"v": 1, "op": "a", "arrays": [{"name": "x", "dtype": "<f4", "shape": [True]}]}),
      b"\0" * 4], "bad_array"),
    ([b"", msgpack.packb({"v": 1, "op": "a", "arrays": [{"name": "x", "dtype": "<f4", "shape": [1]}] * 2}),
      b"\0" * 4, b"\0" * 4], "bad_array"),
])
def test_malformed_frames_get_their_code(frames, code):
    with pytest.raises(ProtocolError) as err:
        decode(frames)
    assert err.value.code == code and err.value.message


def test_limits_refuse_before_parsing():
    limits = Limits(max_header_bytes=100, max_array_bytes=64, max_message_bytes=10_000, max_rows=5)
    for arrays, header in (({"x": np.zeros((3, 3))}, {}), ({"x": np.zeros((6, 1), np.float32)}, {}),
                           ({}, {"pad": "x" * 200})):
        with pytest.raises(ProtocolError) as err:
            decode(encode({"op": "a", **header}, arrays), limits)
        assert err.value.code == "too_large"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=7))
def test_random_frames_never_escape_as_anything_but_protocol_errors(frames):
    try:
        decode(frames)
    except ProtocolError as exc:
        assert exc.code in protocol.ERROR_CODES


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=20), max_size=6))
def test_random_headers_decode_or_fail_with_a_code(header):
    try:
        decode([b"", msgpack.packb(header)])
    except ProtocolError as exc:
        assert exc.code in protocol.ERROR_CODES


@pytest.mark.parametrize("dtype", [[1], {"a": 1}, None, 4, b"<f4"])
def test_a_dtype_that_is_no_string_is_a_bad_array(dtype):
    # A list or map as dtype raised TypeError (unhashable) and the daemon answered `internal`.
    frames = [b"", msgpack.packb({"v": 1, "op": "a", "arrays": [{"name": "x", "dtype": dtype, "shape": [1]}]}),
              b"\0" * 4]
    with pytest.raises(ProtocolError) as err:
        decode(frames)
    assert err.value.code == "bad_array"


def test_a_small_header_of_deep_nesting_is_refused_without_recursing():
    # 60,000 nested arrays fit in 60 KB, under the header limit: msgpack's C unpacker
    # stops at its own stack limit, and the depth check catches what that lets through.
    deep = b"\x82\xa1v\x01\xa2op" + b"\x91" * 60_000 + b"\xc0"
    with pytest.raises(ProtocolError, match="nests deeper") as err:
        decode([b"", deep])
    assert err.value.code == "bad_header"
    nested = None
    for _ in range(protocol.MAX_DEPTH):
        nested = [nested]
    decode([b"", msgpack.packb({"v": 1, "op": "a", "n": nested[0]})])          # depth 8: taken
    with pytest.raises(ProtocolError, match="nests deeper"):
        decode([b"", msgpack.packb({"v": 1, "op": "a", "n": nested})])         # depth 9: refused


def test_long_maps_and_lists_in_a_header_are_refused():
    for header in ({"v": 1, "op": "a", **{f"k{i}": i for i in range(protocol.MAX_MAP_LEN)}},
                   {"v": 1, "op": "a", "list": list(range(protocol.MAX_ARRAY_LEN + 1))}):
        with pytest.raises(ProtocolError) as err:
            decode([b"", msgpack.packb(header)])
        assert err.value.code == "bad_header"


def test_the_whole_message_and_the_frame_count_have_limits():
    limits = Limits(max_message_bytes=1000)
    frames = encode({"op": "a"}, {"x": np.zeros(200, np.float32), "y": np.zeros(200, np.float32)})
    assert all(len(f) <= 1000 for f in frames)      # each frame fits; together they do not
    with pytest.raises(ProtocolError, match="message is") as err:
        decode(frames, limits)
    assert err.value.code == "too_large"
    frames = encode({"op": "a"}, {"x": np.zeros(1), "y": np.zeros(1), "w": np.zeros(1),
                                  "ids": np.zeros(1, np.int64)}) + [b"\0" * 8]
    with pytest.raises(ProtocolError, match="array frames") as err:
        decode(frames)
    assert err.value.code == "bad_array"


def test_ext_types_never_decode():
    # msgpack ext types are where other codecs hide object (de)serialization: none here.
    with pytest.raises(ProtocolError) as err:
        decode([b"", msgpack.packb({"v": 1, "op": "a", "o": msgpack.ExtType(1, b"\x80\x04N.")})])
    assert err.value.code == "bad_header"
