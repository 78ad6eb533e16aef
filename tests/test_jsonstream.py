"""
The device channel's stream decoder, fuzzed: however the firmware splits or
pads its JSON, the same values come out; whatever garbage it sends, the
decoder reports errors, never raises, and never holds more than its limit.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from dashd.channel.jsonstream import JSONStreamDecoder, StreamError

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
frames = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
whitespace = st.text(alphabet=" \t\r\n", max_size=3)


def decode(decoder: JSONStreamDecoder, chunks: list) -> list:
    out = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(frames, min_size=1, max_size=6),
    pads=st.lists(whitespace, min_size=7, max_size=7),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    as_bytes=st.booleans(),
)
def test_any_split_gives_the_same_values(values, pads, cuts, as_bytes):
    text = "".join(pads[i] + json.dumps(v, ensure_ascii=False) for i, v in enumerate(values))
    text += pads[-1]
    data = text.encode("utf-8") if as_bytes else text
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    decoder = JSONStreamDecoder(max_value_bytes=1 << 20)
    assert decode(decoder, chunks) == values
    assert decoder.pending == 0


@settings(max_examples=500, deadline=None)
@given(chunks=st.lists(st.binary(max_size=200) | st.text(max_size=200), max_size=10))
def test_garbage_never_raises_and_stays_bounded(chunks):
    decoder = JSONStreamDecoder(max_value_bytes=256)
    for chunk in chunks:
        for item in decoder.feed(chunk):
            assert isinstance(item, (StreamError, dict, list))
        # What is held is at most the limit plus the chunk just fed.
        assert decoder.pending <= 256 + len(chunk) + 1


@settings(max_examples=200, deadline=None)
@given(
    garbage=st.text(alphabet="abc}]:, \"\\", min_size=1, max_size=30),
    value=frames,
)
def test_resynchronises_after_garbage(garbage, value):
    decoder = JSONStreamDecoder()
    items = decode(decoder, [garbage.replace('"', "'").replace("\\", "/") + "\n",
                             json.dumps(value)])
    assert items[-1] == value
    assert all(isinstance(i, StreamError) for i in items[:-1])


def test_oversized_value_is_skipped_without_buffering():
    decoder = JSONStreamDecoder(max_value_bytes=100)
    big = json.dumps({"blob": "x" * 10_000, "esc": "\\\"" * 50})
    items = []
    for i in range(0, len(big), 97):
        items += decoder.feed(big[i:i + 97])
        assert decoder.pending <= 200
    items += decoder.feed('{"after": 1}')
    assert len(items) == 2
    assert items[0].too_large and "larger than 100 bytes" in items[0].message
    assert items[1] == {"after": 1}


def test_errors_name_the_problem():
    decoder = JSONStreamDecoder()
    [error] = list(decoder.feed("hello"))
    assert error.message == "not a JSON object: 'hello'"
    [error] = list(decoder.feed('{"a": nope}'))
    assert error.message.startswith("invalid JSON: Expecting value")
    [error] = list(decoder.feed(b"\xff"))
    assert error.message == "invalid UTF-8 in the stream"
    assert list(decoder.feed('{"ok": true}')) == [{"ok": True}]


def test_utf8_split_inside_a_character():
    decoder = JSONStreamDecoder()
    data = json.dumps({"name": "caf\u00e9 \u2603"}, ensure_ascii=False).encode()
    cut = data.index(b"\xc3") + 1
    assert decode(decoder, [data[:cut], data[cut:]]) == [{"name": "caf\u00e9 \u2603"}]


def test_a_value_garbage_leaves_open_does_not_swallow_the_next_frames():
    # "{{{" opens a value that can never close; the next whole frame ends it.
    decoder = JSONStreamDecoder()
    items = decode(decoder, ["\x00garbage{{{" + "x" * 100, '{"id": 1, "result": 2}'])
    assert items[0].message == "not a JSON object: '\\x00garbage'"
    assert items[1].discarded and items[1].message.startswith(
        "an unfinished JSON value was abandoned: '{{{xxx")
    assert items[2:] == [{"id": 1, "result": 2}]
    assert decoder.pending == 0
    assert list(decoder.feed('{"id": 2}')) == [{"id": 2}]


def test_a_whole_value_inside_a_split_one_is_not_mistaken_for_a_frame():
    # The middle part of a genuinely split value may be a value on its own.
    for parts in [['{"a": ', "{}", "}"], ['{"a": [1, ', "[]", "]}"],
                  ['{"a": "s", "b": ', '{"c": 1}', "}"], ['[-1', "e", '5, ', "{}", "]"],
                  ['{"n": 1', ', "m": ', "[]", "}"], ['{"n": tr', 'ue, "m": ', "{}", "}"],
                  ['{"s": "a\\', '"b", "m": ', "{}", "}"]]:
        decoder = JSONStreamDecoder()
        assert decode(decoder, parts) == [json.loads("".join(parts))], parts


def test_an_oversized_value_is_abandoned_for_the_next_whole_frame():
    # Garbage that opens a value and grows past the limit: skipped, and the
    # next whole frame is read, even though the skipped value never ended.
    decoder = JSONStreamDecoder(max_value_bytes=100)
    items = decode(decoder, ['{"a": [' + "1, " * 60, "2, " * 60, '{"id": 7}'])
    assert [i.too_large for i in items[:-1]] == [True]
    assert items[-1] == {"id": 7}
