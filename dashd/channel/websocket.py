"""
The two WebSocket doors, on Autobahn: ``/api/v2/rpc`` for devices and
``/api/v2/notify`` for notification subscribers.

Both are authenticated by the REST layer before the upgrade; the
authenticated party is handed to the protocol instance through
L{Handover}, a one-connection factory wrapper, so nothing about the peer is
trusted from the handshake itself. The protocols stay thin: the device one
turns messages into JSON values for L{dashd.channel.session.DeviceSession}; the
notification one writes events, holding at most a bounded backlog for a
subscriber that does not read.
"""

from __future__ import annotations

import fcntl
import functools
import inspect
import pprint
import random
import re
import socket
import sys
import termios
from collections import deque
from typing import Any

import autobahn.twisted.websocket
import autobahn.websocket.protocol
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import TrafficStats, WebSocketProtocol
from txaio._common import _BatchedTimer
from twisted.internet.defer import succeed
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.logger import Logger
from zope.interface import implementer

from dashd.app.fleet import Fleet
from dashd.channel import closecodes, frames
from dashd.channel.hub import Event, IHub
from dashd.channel.jsonstream import JSONStreamDecoder, StreamError
from dashd.channel.session import DeviceSession
from dashd.config import Config
from dashd.ops import turns
from dashd.domain import access
from dashd.domain.model import ApiKey, Device

log = Logger()

# A device that sends this many unreadable values in a row is not speaking
# JSON-RPC; drop it rather than answer garbage forever.
MAX_CONSECUTIVE_ERRORS = 50


class _Formatted(functools.partial):  # type: ignore[type-arg]
    """Text made only if a log line shows it: the call it is, made when
    the text is wanted. A C{partial}, so that making one (six times a
    message, for Autobahn's debug lines) runs no Python code."""

    __slots__ = ()

    def __str__(self) -> str:
        return str(self())


def _lazy_pformat(value: Any, *args: Any, **kwargs: Any) -> Any:
    # Autobahn pretty-prints every new connection's ~30 options for a debug
    # log line, debug on or off (an eighth of the server's time in a connect
    # storm). That list is the only one it pretty-prints: defer it to when
    # the line is written; anything else is formatted as before.
    if isinstance(value, list) and not args and not kwargs:
        return _Formatted(pprint.pformat, value)
    return pprint.pformat(value, *args, **kwargs)


def _lazy(function: Any) -> Any:
    # Calling it makes a _Formatted, in C.
    return functools.partial(_Formatted, function)


def _defer_autobahn_debug_formatting() -> None:
    """
    Autobahn computes the arguments of its debug log lines whether or not
    debug logging is on: a pretty-printed option list per connection, and
    highlighted names and values (hltype, hlval) for every chunk received
    and sent. In its WebSocket modules those helpers only ever feed log
    lines, so make them produce their text when a line is written.
    """
    autobahn.websocket.protocol.pformat = _lazy_pformat  # type: ignore[attr-defined]
    for module in (autobahn.websocket.protocol, autobahn.twisted.websocket):
        for name in ("hltype", "hlval"):
            function = getattr(module, name, None)
            if function is not None and not getattr(function, "_dashd_lazy", False):
                deferred = _lazy(function)
                deferred._dashd_lazy = True  # type: ignore[attr-defined]
                setattr(module, name, deferred)


_defer_autobahn_debug_formatting()


class _LazyUtf8Validator:
    """
    Autobahn's incremental UTF-8 validator, made when first used. Autobahn
    makes one for every connection as it is made (a C object through cffi,
    its own allocation and a release of the interpreter lock), used only
    when the connection checks incoming text (utf8validateIncoming): the
    device channel does not (it has its own check), so its connections
    never make one.
    """

    __slots__ = ("_validator",)

    def __init__(self) -> None:
        self._validator: Any = None

    def _made(self) -> Any:
        if self._validator is None:
            self._validator = _Utf8Validator()
        return self._validator

    def reset(self) -> None:
        self._made().reset()

    def validate(self, ba: bytes) -> Any:
        return self._made().validate(ba)


class _SmallFrameMasker:
    """
    Autobahn's unmasker of one frame (C{XorMaskerSimple}: pointer, reset,
    process), for frames under L{SMALL_FRAME} bytes, in Python: the XOR of
    the payload and the repeated key as two integers. Autobahn's own is a C
    object through cffi, made for every frame a device sends (three calls
    into C a frame, each a release of the interpreter lock, and an
    allocation freed by the cffi collector); this is one object with two
    slots.
    """

    __slots__ = ("_mask", "_ptr")

    def __init__(self, mask: bytes) -> None:
        self._mask = bytes(mask)
        self._ptr = 0

    def pointer(self) -> int:
        return self._ptr

    def reset(self) -> None:
        self._ptr = 0

    def process(self, data: bytes) -> bytes:
        n = len(data)
        start = self._ptr & 3
        key = self._mask[start:] + self._mask[:start]
        self._ptr += n
        return (int.from_bytes(data, "little")
                ^ int.from_bytes((key * ((n >> 2) + 1))[:n], "little")).to_bytes(n, "little")


# Frames of this size or more go to Autobahn's (SIMD) unmasker.
SMALL_FRAME = 4096


def _create_xor_masker(mask: bytes, length: int | None = None) -> Any:
    if length is not None and length < SMALL_FRAME:
        return _SmallFrameMasker(mask)
    return _autobahn_xor_masker(mask, length)


# Autobahn's own (kept on ours, should this module be imported again).
_autobahn_xor_masker = getattr(autobahn.websocket.protocol.create_xor_masker, "autobahn",
                               autobahn.websocket.protocol.create_xor_masker)
_create_xor_masker.autobahn = _autobahn_xor_masker  # type: ignore[attr-defined]
autobahn.websocket.protocol.create_xor_masker = _create_xor_masker

_Utf8Validator = getattr(autobahn.websocket.protocol.Utf8Validator, "autobahn",
                         autobahn.websocket.protocol.Utf8Validator)
_LazyUtf8Validator.autobahn = _Utf8Validator  # type: ignore[attr-defined]
autobahn.websocket.protocol.Utf8Validator = _LazyUtf8Validator  # type: ignore[misc]


def shared_options(factory: WebSocketServerFactory) -> None:
    """
    Give the factory its own protocol class that carries the protocol options
    (set with setProtocolOptions) as class attributes: Autobahn copies each
    option onto every connection unless the protocol already has it, which
    costs memory and time on each of thousands of connections.
    """
    base = factory.protocol
    options = {}
    for name in base.CONFIG_ATTRS:
        value = getattr(factory, name)
        # A function as a class attribute would become a method, called with
        # the protocol as an extra first argument (perMessageCompressionAccept
        # is one): keep functions as they are.
        options[name] = staticmethod(value) if inspect.isfunction(value) else value
    factory.protocol = type(base.__name__, (base,), options)


class _TimerCall:
    """
    One call in a L{LeanBatchedTimer}: what txaio's C{_BatchedCall} does
    (C{cancel}, and being called), in slots, calling the function itself
    rather than a closure made for its arguments. Every open connection
    holds one (its next keep-alive ping, or the timeout of the ping in
    flight): about 0.4 KB less a device (docs/performance.md).
    """

    __slots__ = ("_timer", "_index", "_call")

    def __init__(self, timer: Any, index: int, call: Any) -> None:
        self._timer = timer
        self._index = index
        self._call = call

    def cancel(self) -> None:
        self._timer._remove_call(self._index, self)
        self._timer = None

    def __call__(self) -> Any:
        return self._call()


class LeanBatchedTimer(_BatchedTimer):  # type: ignore[misc]
    """
    Autobahn's batched timer (a factory's C{_batched_timer}: a timer a
    second for all the connections' timers due in that second), whose
    calls without arguments (all of Autobahn's and dashd's) are
    L{_TimerCall}s.
    """

    @classmethod
    def replacing(cls, timer: _BatchedTimer) -> "LeanBatchedTimer":
        return cls(timer._bucket_milliseconds, timer._chunk_size, timer._get_seconds,
                   timer._create_delayed_call)

    def call_later(self, delay: float, func: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return super().call_later(delay, func, *args, **kwargs)
        # As _BatchedTimer.call_later, with the function itself.
        now = self._get_seconds()
        real_time = int(now + delay) * 1000
        real_time -= int(real_time % self._bucket_milliseconds)
        call = _TimerCall(self, real_time, func)
        bucket = self._buckets.get(real_time)
        if bucket is not None:
            bucket[1].append(call)
        else:
            delayed_call = self._create_delayed_call(
                max(0.0, (real_time / 1000.0) - now), self._notify_bucket, real_time)
            self._buckets[real_time] = (delayed_call, [call])
        return call

    def _remove_call(self, real_time: int, call: Any) -> None:
        # txaio's list.remove() looks from the start of the second's list;
        # a call cancelled just after it was made (the first ping, moved by
        # spread_pings() as each device connects) is at its end, behind all
        # the others made in that second (a thousand in a connect storm).
        bucket = self._buckets.get(real_time)
        if bucket is not None and bucket[1] and bucket[1][-1] is call:
            calls = bucket[1]
            calls.pop()
            if not calls:
                del self._buckets[real_time]
                bucket[0].cancel()
            return
        super()._remove_call(real_time, call)


def spread_pings(proto: WebSocketProtocol) -> None:
    """
    Move the connection's first keep-alive ping to a random point in the
    second half of the interval. Autobahn pings every connection a fixed
    interval after it opened and after each ping since, so a fleet that
    (re)connected within seconds, as after a restart, would be pinged in the
    same few seconds of every interval for good: 10,000 pings at once,
    where spread out they cost nothing noticeable (docs/performance.md).
    (Autobahn's timers fire in whole seconds, so the spread is by second.)
    """
    interval = proto.autoPingInterval
    call = proto.autoPingPendingCall
    if not interval or call is None:
        return
    call.cancel()
    proto.autoPingPendingCall = proto.factory._batched_timer.call_later(
        interval * random.uniform(0.5, 1.0), proto._sendAutoPing
    )


def close_connection(proto: WebSocketProtocol, code: int, reason: str) -> None:
    """Close with any code, including those Autobahn's sendClose refuses
    (1001 going away, 1008 policy, 1009 too big)."""
    if proto.state == WebSocketProtocol.STATE_OPEN:
        proto.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123], isReply=False)
    elif proto.state in (WebSocketProtocol.STATE_CONNECTING, WebSocketProtocol.STATE_PROXY_CONNECTING):
        proto.dropConnection(abort=True)
    # CLOSING: the closing handshake is under way already (with a timeout).


def take_over_producer(transport: Any, producer: Any) -> None:
    """
    Make C{producer} the transport's producer (None: no producer at all).

    Twisted Web registered its HTTP channel as the producer of the
    connection; once Autobahn has taken the connection over, that channel is
    dead weight, and keeping it registered would keep it in memory.
    """
    transport.unregisterProducer()
    if producer is not None:
        transport.registerProducer(producer, True)


class Handover:
    """
    A factory stand-in for one WebSocketResource render: builds the protocol
    from the real factory and gives it what the REST layer authenticated.
    """

    def __init__(self, factory: WebSocketServerFactory, **attributes: Any) -> None:
        self._factory = factory
        self._attributes = attributes

    def buildProtocol(self, addr: Any) -> WebSocketServerProtocol:
        proto = self._factory.buildProtocol(addr)
        for name, value in self._attributes.items():
            setattr(proto, name, value)
        return proto


# What Autobahn keeps of the opening handshake (the request as read, its
# headers, the answer sent) and reads only while it handles it: about 2.5 KB
# a connection, dropped once the connection is open.
_HANDSHAKE_ATTRIBUTES = (
    "http_request_data", "http_status_line", "http_headers", "http_request_uri",
    "http_request_path", "http_request_params", "http_request_host", "http_response_data",
    "websocket_protocols", "websocket_origin", "websocket_extensions", "_wskey",
)


def forget_handshake(proto: WebSocketServerProtocol) -> None:
    for name in _HANDSHAKE_ATTRIBUTES:
        setattr(proto, name, None)


class _NoSendQueue(deque):  # type: ignore[type-arg]
    """
    The send queue every open device connection shares: Autobahn queues
    only sends made with C{sync=True} or a C{chopsize} (and what follows one
    while it is queued), which dashd never makes; a connection's own empty
    deque is 0.7 KB. Anything put here would be a bug: it says so.
    """

    def append(self, item: Any) -> None:
        raise RuntimeError("dashd sends no synchronous or chopped WebSocket frames")

    appendleft = extend = extendleft = append  # type: ignore[assignment]


_NO_SEND_QUEUE = _NoSendQueue()

# What an idle open connection of Autobahn's holds at these values: class
# attributes of the device protocol, so that the instance need not (see
# compact()). Immutable values only.
_QUIET: dict[str, Any] = {name: None for name in _HANDSHAKE_ATTRIBUTES}
_QUIET.update(
    _perMessageCompress=None, trackedTimings=None, utf8validator=None, current_frame=None,
    _transport_details=None, autoPingPending=None, autoPingPendingSent=None,
    autoPingTimeoutCall=None, autoPingPendingSeq=0, openHandshakeTimeoutCall=None,
    closeHandshakeTimeoutCall=None, localCloseCode=None, localCloseReason=None,
    remoteCloseCode=None, remoteCloseReason=None, wasNotCleanReason=None,
    closedByMe=False, failedByMe=False, droppedByMe=False, wasClean=False,
    wasServerConnectionDropTimeout=False, wasOpenHandshakeTimeout=False,
    wasCloseHandshakeTimeout=False, wasServingFlashSocketPolicyFile=False,
    wasMaxFramePayloadSizeExceeded=False, wasMaxMessagePayloadSizeExceeded=False,
    inside_message=False, triggered=False, data=b"", send_state=0,
    websocket_protocol_in_use=None, websocket_version=13, base_url=None, device=None,
    _errors=0, send_queue=_NO_SEND_QUEUE, _ping_waits=0, _ping_waited_for=0,
)


def _same(a: Any, b: Any) -> bool:
    return a is b or (type(a) is type(b) and a == b)


def compact(proto: WebSocketServerProtocol) -> None:
    """
    Shrink an open device connection's Autobahn state to what differs from
    an idle connection's (about 4 KB less a device, docs/performance.md):

    - the traffic counters, which Autobahn updates on every frame and
      nobody reads per connection, are the factory's, for all connections;
    - no UTF-8 validator (the device channel does not use Autobahn's) and
      no send queue of its own (see L{_NoSendQueue});
    - the transport details (read while the connection opens) are dropped;
    - every attribute at its idle value (L{_QUIET}, class attributes of the
      protocol) leaves the instance's dictionary, which is rebuilt: a
      dictionary never shrinks by deleting, and 73 keys take 3.3 KB where
      up to 42 take 0.8 KB. Autobahn setting one again later puts it back
      (reading a message sets about 15: 30 or so on an idle connection).
    """
    proto.trafficStats = proto.factory.traffic_stats  # type: ignore[attr-defined]
    proto.utf8validator = None
    proto._transport_details = None
    if not proto.send_queue:
        proto.send_queue = _NO_SEND_QUEUE
    factory = proto.factory
    if factory.valid_events is None:
        factory.valid_events = proto._valid_events
    proto._valid_events = factory.valid_events
    quiet = type(proto)._quiet
    proto.__dict__ = {
        k: v for k, v in proto.__dict__.items() if k not in quiet or not _same(v, quiet[k])
    }


def unread_bytes(transport: Any) -> int:
    """Bytes waiting in the kernel to be read from the socket under
    C{transport} (through TLS and HTTP channel wrappers); 0 if unknown."""
    for _ in range(4):
        if transport is None:
            return 0
        handle = getattr(transport, "getHandle", None)
        if handle is not None:
            try:
                sock = handle()
                if isinstance(sock, socket.socket):
                    buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
                    return int.from_bytes(buf, sys.byteorder)
            except (OSError, AttributeError):
                return 0
        transport = getattr(transport, "transport", None)
    return 0


class ChannelProtocol(WebSocketServerProtocol):
    """What the device and notification channels share."""

    # How many more ping timeouts a peer gets while its socket holds bytes
    # dashd has not read (see onAutoPingTimeout), and for which ping.
    MAX_PING_WAITS = 6
    _ping_waits = 0
    _ping_waited_for = 0

    def onAutoPingTimeout(self) -> None:
        """
        No pong within the ping timeout: Autobahn drops the connection. But
        when dashd itself is behind (a turn of the reactor handles a bounded
        number of ready connections, dashd.ops.turns, so in a connect storm
        timers run while thousands of sockets wait to be read), the pong may
        be in the socket, unread, or the ping itself may have waited its
        turn to be written: when the socket holds unread bytes, or a turn
        was full within the timeout (L{dashd.ops.turns.behind}), wait
        another timeout (the pong, or any frame, cancels the wait as
        usual), up to L{MAX_PING_WAITS} times a ping. A dead peer (device or
        subscriber) sends nothing, so its socket holds nothing unread, and
        outside a storm it is dropped on time; in one, up to six timeouts
        later.
        """
        seq = self.autoPingPendingSeq
        if self._ping_waited_for != seq:
            self._ping_waited_for, self._ping_waits = seq, 0
        if (self._ping_waits < self.MAX_PING_WAITS and self.autoPingTimeout
                and self.state == WebSocketProtocol.STATE_OPEN
                and (unread_bytes(self.transport) > 0 or turns.behind(self.autoPingTimeout))):
            self._ping_waits += 1
            self.factory.ping_waits = getattr(self.factory, "ping_waits", 0) + 1
            self.autoPingTimeoutCall = self.factory._batched_timer.call_later(
                self.autoPingTimeout, self.onAutoPingTimeout)
            return
        super().onAutoPingTimeout()

    def onMessageEnd(self) -> None:
        """
        Autobahn's, without its C{message} event when nothing listens to
        it: after C{onMessage} Autobahn fires the event to the handlers
        added with C{.on("message", ...)}, and with none it still makes a
        Deferred, a closure and a callback a message. dashd adds none;
        should anything add one, Autobahn's own runs.
        """
        if self._listeners is not None or self._parent is not None:
            super().onMessageEnd()
            return
        if not self.failedByMe:
            payload = b"".join(self.message_data)
            if self.trackedTimings:
                self.trackedTimings.track("onMessage")
            self._onMessage(payload, self.message_is_binary)
        self.message_data = None

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        # Autobahn fires is_closed with the protocol itself: a reference
        # cycle that would keep the connection's objects until a full
        # collection, which walks the whole fleet. Its waiters have run.
        self.is_closed = succeed(None)


_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])"
                   r"(?::[0-9]{1,5})?$")


def device_base_url(transport: Any, host: str | None) -> str:
    """The HTTP address a device reached dashd at, from its own WebSocket
    handshake: http or https as its connection is, and the Host it sent
    (checked to be a host name or address, with a port), else the address
    of dashd's end of its connection."""
    secure = ISSLTransport.providedBy(transport)
    scheme = "https" if secure else "http"
    if host and _HOST.match(host):
        return "%s://%s" % (scheme, host)
    address = transport.getHost()
    where = getattr(address, "host", "localhost")
    if ":" in where:
        where = "[%s]" % where
    return "%s://%s:%d" % (scheme, where, getattr(address, "port", 443 if secure else 80))


def _accept_subprotocol(request: Any) -> str | None:
    # Devices offer e.g. "dash.mongoose-os.com"; agreeing to whatever they
    # offer keeps strict clients happy and means nothing to dashd.
    return request.protocols[0] if request.protocols else None


# What every open device connection has on itself once it has read a frame
# and answered a ping: in slots of the device protocol, 8 bytes each, not in
# its instance dictionary. compact() leaves about 20 keys in the dictionary
# (a table of 32 slots, 0.45 KB); reading frames added these back, and at
# 22 keys the dictionary grew to a table of 64 (0.83 KB) for good.
_SLOTS = (
    # Autobahn's, per frame and message read
    "data", "current_frame", "current_frame_masker", "inside_message", "_isMessageCompressed",
    "utf8validateIncomingCurrentMessage", "message_is_binary", "message_data",
    "message_data_total_length", "frame_length", "frame_data", "control_frame_data",
    # per keep-alive ping
    "autoPingPendingSent", "autoPingPendingSeq", "autoPingPending", "autoPingTimeoutCall",
    "autoPingPendingCall",
    # for the connection's life
    "factory", "transport", "connected", "peer", "state", "trafficStats", "is_closed", "is_open",
    "_valid_events", "_results", "websocket_protocol_in_use", "websocket_extensions_in_use",
    # dashd's
    "fleet", "session", "_decoder", "_errors",
)


@implementer(IPushProducer)
class DeviceProtocol(ChannelProtocol):
    __slots__ = _SLOTS
    _quiet = _QUIET
    send_queue = _NO_SEND_QUEUE

    # Set by Handover before the connection is made; the device record is
    # handed to the session when the connection opens (the session keeps it
    # and the newer versions it learns).
    device: Device | None
    fleet: Fleet
    session: DeviceSession | None

    def __init__(self) -> None:
        # A slot has no class attribute to fall back on: each starts at the
        # value the attribute had before it was set (_SLOT_DEFAULTS).
        for name, value in _SLOT_DEFAULTS:
            setattr(self, name, value)
        super().__init__()

    base_url: str | None = None

    def onConnect(self, request: Any) -> str | None:
        self.base_url = device_base_url(self.transport, request.headers.get("host"))
        return _accept_subprotocol(request)

    def onOpen(self) -> None:
        self.factory.connections_opened += 1
        forget_handshake(self)
        device, self.device = self.device, None
        assert device is not None
        try:
            spread_pings(self)
            # Twisted calls pauseProducing when what we write to the device
            # is piling up unread, and resumeProducing once it drained.
            take_over_producer(self.transport, self)
            self._decoder = JSONStreamDecoder(self.factory.max_frame_bytes)
            self._errors = 0
            self.session = DeviceSession(
                device, self.fleet, self._send_text, self._close, peer=self.peer,
                base_url=self.base_url, unread=self._unread,
            )
            self.base_url = None
            self.session.opened()
            compact(self)
        except Exception:
            log.failure("device {id}: opening the session", id=device.id)
            close_connection(self, closecodes.INTERNAL_ERROR, "internal error")

    def _unread(self) -> bool:
        """Whether the device's socket holds bytes dashd has not read."""
        return unread_bytes(self.transport) > 0

    def _send_text(self, text: str) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.factory.frames_sent += 1
            self.sendMessage(text.encode("utf-8"), isBinary=False)

    def _close(self, code: int, reason: str) -> None:
        close_connection(self, code, reason)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None or self.state != WebSocketProtocol.STATE_OPEN:
            return  # closing: what the device still sends is moot
        try:
            for item in self._decoder.feed(payload):
                if isinstance(item, StreamError):
                    self.factory.frames_invalid += 1
                    self._errors += 1
                    code = frames.TOO_LARGE if item.too_large else frames.PARSE_ERROR
                    session.reply_error(None, code, item.message)
                    if self._errors >= MAX_CONSECUTIVE_ERRORS:
                        log.warn("device {id}: dropped for sending garbage", id=session.device_id)
                        close_connection(self, closecodes.POLICY, "too many invalid frames")
                        return
                else:
                    self.factory.frames_received += 1
                    self._errors = 0
                    session.received(item)
        except Exception:
            log.failure("device {id}: handling a message", id=session.device_id)

    def onFrameEnd(self) -> Any:
        ended = super().onFrameEnd()
        # The frame's unmasker (about 0.3 KB with its C buffer) is read only
        # until its frame ends, and made anew for the next frame.
        if self.current_frame is None:
            self.current_frame_masker = None
        return ended

    def pauseProducing(self) -> None:
        # Stop reading from the device too: a device that does not read may
        # not make us queue replies to what it keeps sending.
        self.transport.pauseProducing()
        if self.session is not None:
            self.session.stalled()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()
        if self.session is not None:
            self.session.unstalled()

    def stopProducing(self) -> None:
        pass  # the connection is going; onClose does the rest

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is not None:
            why = reason or ("closed with code %s" % code if code else "connection lost")
            if not wasClean and self.wasNotCleanReason:
                why = self.wasNotCleanReason
            # The session holds this protocol's methods; with the link back
            # gone, the session is freed at once rather than left to the
            # cycle collector's full (whole-fleet) collections.
            session, self.session = self.session, None
            try:
                session.closed(why)
            except Exception:
                log.failure("device {id}: closing the session", id=session.device_id)


_UNSET = object()


def _slot_default(name: str) -> Any:
    """What reading a slot's attribute gave before it was set, when it
    was a class attribute (or dashd's idle value, _QUIET)."""
    if name == "session":
        return None
    if name in _QUIET:
        return _QUIET[name]
    for klass in ChannelProtocol.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return _UNSET


_SLOT_DEFAULTS = tuple(
    (name, default) for name in _SLOTS for default in (_slot_default(name),)
    if default is not _UNSET
)

for _name, _value in _QUIET.items():
    if _name not in _SLOTS:
        setattr(DeviceProtocol, _name, _value)


class DeviceFactory(WebSocketServerFactory):

    protocol = DeviceProtocol

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__(reactor=reactor)
        self._batched_timer = LeanBatchedTimer.replacing(self._batched_timer)
        self.max_frame_bytes = config["device.max_frame_bytes"]
        # Counted here, read by dashd.ops.metrics when /metrics is scraped.
        self.connections_opened = 0
        self.frames_received = 0
        self.frames_invalid = 0
        self.frames_sent = 0
        # Ping timeouts put off because the device's pong may be unread.
        self.ping_waits = 0
        # What compact() gives every open device connection instead of its
        # own: traffic totals over all of them, the events list.
        self.traffic_stats = TrafficStats()
        self.valid_events: list[str] | None = None
        self.setProtocolOptions(
            autoPingInterval=config["device.ping_interval"],
            autoPingTimeout=config["device.ping_timeout"],
            maxMessagePayloadSize=config["device.max_message_bytes"],
            maxFramePayloadSize=config["device.max_message_bytes"],
            # The stream decoder reads text and binary messages alike and
            # answers invalid UTF-8 with a parse error; Autobahn checking it
            # first would cost a pass over every message and close the
            # connection instead.
            utf8validateIncoming=False,
            allowedOrigins=["*"],
            openHandshakeTimeout=config["http.idle_timeout"],
            closeHandshakeTimeout=2,
            # Say why (e.g. 1009 too big) in a close frame before dropping.
            failByDrop=False,
        )
        shared_options(self)


@implementer(IPushProducer)
class NotifyProtocol(ChannelProtocol):
    # Set by Handover before the connection is made.
    key: ApiKey
    hub: IHub

    def onConnect(self, request: Any) -> Any:
        protocol = _accept_subprotocol(request)
        # In a cluster: open once the other nodes send what this key may see.
        ready = getattr(self.hub, "ready_for", None)
        waiting = ready(self.key) if ready is not None else None
        if waiting is None:
            return protocol
        return waiting.addBoth(lambda _: protocol)

    def onOpen(self) -> None:
        self._paused = False
        self._backlog: deque[str] = deque()
        self._backlog_bytes = 0
        self._subscribed = False
        try:
            # Twisted tells the registered producer when the socket's buffer
            # is full (pauseProducing) and when it has drained again.
            take_over_producer(self.transport, self)
            self.hub.subscribe(self)
            self._subscribed = True
            self._expiry = None
            if self.key.expires is not None:
                clock = self.factory.reactor
                self._expiry = clock.callLater(
                    max(0, self.key.expires - clock.seconds()), self._expired
                )
        except Exception:
            log.failure("notification subscriber {peer}: opening", peer=self.peer)
            close_connection(self, closecodes.INTERNAL_ERROR, "internal error")
            return
        log.info("notification subscriber {peer} (key {key})", peer=self.peer, key=self.key.id)

    def deliver(self, event: Event) -> None:
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        payload = access.event_payload(self.key, event)
        if payload is None:
            return
        if not self._paused:
            self.sendMessage(payload.encode("utf-8"), isBinary=False)
            return
        # Bounded in events and in bytes (an event may be up to a device's
        # largest frame).
        size = len(payload)
        if (len(self._backlog) >= self.factory.max_backlog
                or self._backlog_bytes + size > self.factory.max_backlog_bytes):
            log.warn("notification subscriber {peer} dropped: not reading", peer=self.peer)
            self._unsubscribe()
            self._backlog.clear()
            self._backlog_bytes = 0
            close_connection(self, closecodes.POLICY, "notification backlog exceeded; read faster")
            return
        self._backlog.append(payload)
        self._backlog_bytes += size

    def _expired(self) -> None:
        self._expiry = None
        self._unsubscribe()
        close_connection(self, closecodes.KEY_REVOKED, "API key expired")

    def revoked(self) -> None:
        log.info("notification subscriber {peer}: key {key} revoked", peer=self.peer,
                 key=self.key.id)
        self._unsubscribe()
        close_connection(self, closecodes.KEY_REVOKED, "API key revoked")

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        while self._backlog and not self._paused and self.state == WebSocketProtocol.STATE_OPEN:
            payload = self._backlog.popleft()
            self._backlog_bytes -= len(payload)
            self.sendMessage(payload.encode("utf-8"), isBinary=False)

    def stopProducing(self) -> None:
        self._unsubscribe()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        # The stream is one-way; what a subscriber sends is ignored.
        pass

    def _unsubscribe(self) -> None:
        if getattr(self, "_subscribed", False):
            self._subscribed = False
            self.hub.unsubscribe(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._unsubscribe()
        if hasattr(self, "_backlog"):
            self._backlog.clear()
        expiry = getattr(self, "_expiry", None)
        if expiry is not None and expiry.active():
            expiry.cancel()


class NotifyFactory(WebSocketServerFactory):
    protocol = NotifyProtocol

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__(reactor=reactor)
        self.max_backlog = config["notify.max_backlog"]
        self.max_backlog_bytes = config["notify.max_backlog_bytes"]
        self.setProtocolOptions(
            autoPingInterval=30,
            autoPingTimeout=10,
            maxMessagePayloadSize=65536,
            allowedOrigins=["*"],
            openHandshakeTimeout=config["http.idle_timeout"],
            # A subscriber dropped for not reading has this long to read up
            # to the close frame (and learn why); nothing more is queued for
            # it meanwhile.
            closeHandshakeTimeout=10,
            # Say why (e.g. 1009 too big) in a close frame before dropping.
            failByDrop=False,
        )
        shared_options(self)
