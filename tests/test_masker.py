"""
The frames devices send are unmasked by dashd's small-frame masker
(dashd.channel.websocket._SmallMasker) rather than Autobahn's NVX one: the
same bytes, however a frame's payload arrives in pieces.
"""

from __future__ import annotations

import autobahn.websocket.protocol
from autobahn.websocket import xormasker
from hypothesis import given, settings
from hypothesis import strategies as st

from dashd.channel import websocket


@settings(max_examples=500, deadline=None)
@given(mask=st.binary(min_size=4, max_size=4), payload=st.binary(max_size=600),
       cuts=st.lists(st.integers(0, 600), max_size=4))
def test_the_same_bytes_as_autobahns_masker_in_any_pieces(mask, payload, cuts):
    theirs = xormasker.create_xor_masker(mask, len(payload))
    ours = websocket._SmallMasker(mask)
    pieces = sorted(min(c, len(payload)) for c in cuts) + [len(payload)]
    start = 0
    for end in pieces:
        assert ours.process(payload[start:end]) == theirs.process(payload[start:end])
        assert ours.pointer() == theirs.pointer() == end
        start = end
    ours.reset()
    assert ours.pointer() == 0
    assert ours.process(payload) == bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


def test_small_frames_are_ours_and_large_ones_autobahns():
    create = autobahn.websocket.protocol.create_xor_masker
    assert isinstance(create(b"abcd", 10), websocket._SmallMasker)
    assert isinstance(create(b"abcd", websocket.SMALL_FRAME), websocket._SmallMasker)
    assert not isinstance(create(b"abcd", websocket.SMALL_FRAME + 1), websocket._SmallMasker)
    assert not isinstance(create(b"abcd"), websocket._SmallMasker)
