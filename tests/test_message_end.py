"""
A message read from a device or a subscriber goes to onMessage without
Autobahn's "message" event when nothing listens to it
(ChannelProtocol.onMessageEnd), and with it when something does.
"""

from __future__ import annotations

from dashd.channel.websocket import ChannelProtocol


class _Recording(ChannelProtocol):
    def __init__(self):
        super().__init__()
        self.got = []

    def onMessage(self, payload, isBinary):
        self.got.append((payload, isBinary))


def _ended(protocol, *pieces):
    protocol.failedByMe = False
    protocol.trackedTimings = None
    protocol.message_data = list(pieces)
    protocol.message_is_binary = False
    protocol.onMessageEnd()


def test_a_message_reaches_on_message_with_no_event_when_nothing_listens():
    protocol = _Recording()
    fired = []
    protocol.fire = lambda *args, **kwargs: fired.append(args)  # Autobahn's path would call it
    _ended(protocol, b'{"a":', b"1}")
    assert protocol.got == [(b'{"a":1}', False)]
    assert protocol.message_data is None
    assert fired == []


def test_a_listener_of_the_message_event_still_hears_it():
    protocol = _Recording()
    heard = []
    protocol.on("message", lambda payload, is_binary: heard.append((payload, is_binary)))
    _ended(protocol, b"[1]")
    assert protocol.got == [(b"[1]", False)]
    assert heard == [(b"[1]", False)]


def test_a_failed_connection_s_message_is_dropped():
    protocol = _Recording()
    protocol.failedByMe = True
    protocol.trackedTimings = None
    protocol.message_data = [b"x"]
    protocol.message_is_binary = False
    protocol.onMessageEnd()
    assert protocol.got == [] and protocol.message_data is None
