"""
dashd's unmasker of small WebSocket frames and its lazy UTF-8 validator
(dashd.channel.websocket) against Autobahn's own: the same bytes, the same
pointer, however the payload is split across reads.
"""

from __future__ import annotations

from autobahn.nvx._utf8validator import Utf8Validator as AutobahnValidator
from autobahn.nvx._xormasker import create_xor_masker as autobahn_masker
from hypothesis import given, settings
from hypothesis import strategies as st

import autobahn.websocket.protocol
from dashd.channel import websocket


def test_autobahn_uses_them():
    assert autobahn.websocket.protocol.create_xor_masker is websocket._create_xor_masker
    assert autobahn.websocket.protocol.Utf8Validator is websocket._LazyUtf8Validator
    assert type(websocket._create_xor_masker(b"abcd", 125)) is websocket._SmallFrameMasker
    # Large frames (and an unknown length) stay with Autobahn's.
    assert type(websocket._create_xor_masker(b"abcd", websocket.SMALL_FRAME)).__module__ \
        == autobahn_masker(b"abcd", websocket.SMALL_FRAME).__class__.__module__
    assert type(websocket._create_xor_masker(b"abcd")) is not websocket._SmallFrameMasker


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=4, max_size=4), st.binary(max_size=300), st.lists(st.integers(0, 300)))
def test_small_frames_unmask_as_autobahn_does(mask, payload, cuts):
    ours = websocket._create_xor_masker(mask, len(payload))
    theirs = autobahn_masker(mask, len(payload))
    got, want = [], []
    pos = 0
    for cut in sorted(c for c in cuts if c <= len(payload)) + [len(payload)]:
        got.append(ours.process(payload[pos:cut]))
        want.append(theirs.process(payload[pos:cut]))
        pos = max(pos, cut)
        assert ours.pointer() == theirs.pointer()
    assert b"".join(got) == b"".join(want)
    ours.reset()
    theirs.reset()
    assert ours.pointer() == theirs.pointer() == 0
    assert ours.process(payload) == theirs.process(payload)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=20), max_size=5))
def test_the_lazy_validator_answers_as_autobahn_does(chunks):
    ours = websocket._LazyUtf8Validator()
    theirs = AutobahnValidator()
    assert ours._validator is None  # nothing made until used
    for chunk in chunks:
        assert ours.validate(chunk) == theirs.validate(chunk)
    ours.reset()
    theirs.reset()
    assert ours.validate("é".encode()) == theirs.validate("é".encode())


def test_the_device_channel_timer_calls_and_cancels_as_txaio_does():
    from twisted.internet.task import Clock
    from txaio._common import _BatchedTimer

    clock = Clock()
    fired = []
    timer = websocket.LeanBatchedTimer(1000.0, 1000, clock.seconds, clock.callLater)
    txaio_timer = _BatchedTimer(1000.0, 1000, clock.seconds, clock.callLater)
    for t in (timer, txaio_timer):
        calls = [t.call_later(5, fired.append, (t, n)) for n in range(3)]
        calls += [t.call_later(5, lambda t=t: fired.append((t, "no args")))]
        calls[-1].cancel()  # the last made: popped from the end
        calls[0].cancel()  # the first: as txaio does
        alone = t.call_later(9, fired.append, (t, "alone"))
        alone.cancel()  # its second's only call: the second's timer goes too
    assert type(calls[-1]) is not websocket._TimerCall  # txaio's own
    assert len(clock.getDelayedCalls()) == 2  # one a timer: the 5 s bucket
    clock.advance(10)
    assert [n for t, n in fired if t is timer] == [n for t, n in fired if t is txaio_timer] == [1, 2]
    assert timer._buckets == txaio_timer._buckets == {}
