"""
One connected device: the domain side of its WebSocket.

The WebSocket protocol (L{dashd.channel.websocket}) only turns messages into JSON
values and hands them to L{DeviceSession.received}; everything the protocol
of the device channel (README, "The device channel") means is here,
testable without a socket:

- the device's own calls: ``Dash.Heartbeat``, ``Dash.Shadow.Update``,
  ``Dash.Shadow.Get``, ``Dash.Log``, ``State.Set``; any other method with an
  ``id`` gets error -32601, any other method without one is a notification
  published as ``rpc.out.METHOD``;
- calls dashd makes (REST RPC, ``Sys.GetInfo``, ``Shadow.Delta``), matched to
  the device's answers by id, each with a timeout, all failed at once when
  the connection goes;
- ``Sys.GetInfo`` for devices that do not send ``Dash.Heartbeat`` soon after
  connecting, and ``Shadow.Delta`` on connect and whenever ``desired``
  changes (not retried if the device does not implement it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dashd.app.fleet import Fleet
from dashd import jsontext
from dashd.channel import closecodes, frames
from dashd.channel.router import ISession
from dashd.domain import shadow
from dashd.domain.errors import Busy, DeviceFailed, Offline, Stalled, TimedOut, TooLarge
from dashd.domain.model import Device
from dashd.store import NotFound, StoreError

log = Logger()

# The device's own calls that wait for the store (heartbeats, shadow
# updates and reads), at most, per device: one device's flood may not fill
# the store's queue ahead of everyone else's writes.
MAX_STORE_CALLS_IN_FLIGHT = 64
# Frames dropped over the rate limit: a device whose drops in one window
# exceed SUSTAINED_FACTOR times what the rate lets through in it is closed
# (close code 4029); one a little over its limit only loses the excess.
ABUSE_WINDOW = 10.0
SUSTAINED_FACTOR = 10
# Seconds between two log lines about one device's dropped frames.
WARN_EVERY = 60.0


@dataclass
class _PendingCall:
    method: str
    deferred: Deferred[Any]
    timer: IDelayedCall


@implementer(ISession)
class DeviceSession:
    # One per connected device: slots keep it at a fifth of a dict's size
    # (about 1.3 KB less per device).
    __slots__ = (
        "device", "base_url", "device_id", "fleet", "peer", "_send", "_close", "_config",
        "_clock", "src", "_next_id", "_pending", "_info_call", "_heard_info", "_ready",
        "_delta_unsupported", "_closed", "closing", "_ended_by", "_stall_timer", "_dropped",
        "_rate", "_burst", "_tokens", "_refilled", "_window_start", "_window_drops",
        "_unlogged_drops", "_warned_at", "_store_calls", "_unread", "_info_waits",
    )

    # How many times the info request waits for input already received
    # but not read yet (see _request_info).
    MAX_INFO_WAITS = 10

    def __init__(
        self,
        device: Device,
        fleet: Fleet,
        send: Callable[[str], None],
        close: Callable[[int, str], None],
        peer: str = "",
        base_url: str | None = None,
        unread: Callable[[], bool] | None = None,
    ) -> None:
        self.device = device
        # The HTTP address the device itself reached dashd at (its handshake's
        # scheme and Host): where it can download firmware (pull mode).
        self.base_url = base_url
        self.device_id = device.id
        self.fleet = fleet
        self.peer = peer
        self._send = send
        self._close = close
        self._config = fleet.config
        self._clock = fleet.clock
        # The src the device announced; Mongoose OS drops frames addressed to
        # anyone else, so replies and calls carry it as dst.
        self.src: str | None = None
        self._next_id = 0
        self._pending: dict[int, _PendingCall] = {}
        self._info_call: IDelayedCall | None = None
        self._heard_info = False
        self._ready = False
        self._delta_unsupported = False
        self._closed = False
        # Set once dashd has asked this connection to close: no more calls;
        # and why.
        self.closing = False
        self._ended_by: str | None = None
        # Set while the device leaves our writes unread (see stalled()).
        self._stall_timer: IDelayedCall | None = None
        self._dropped = False
        # The device's frames: a token bucket (device.frames_per_second,
        # device.frame_burst), what it dropped, and the device's calls
        # waiting for the store.
        self._rate = float(self._config["device.frames_per_second"])
        self._burst = float(self._config["device.frame_burst"])
        self._tokens = self._burst
        self._refilled = self._clock.seconds()
        self._window_start = self._refilled
        self._window_drops = 0
        self._unlogged_drops = 0
        self._warned_at: float | None = None
        self._store_calls = 0
        # Whether the device has sent what dashd has not read yet.
        self._unread = unread
        self._info_waits = 0

    # Life cycle

    def opened(self) -> None:
        fleet = self.fleet
        replaced = fleet.router.attach(self)
        log.info("device {id} online from {peer}", id=self.device_id, peer=self.peer)
        # A device whose token two devices share, or that reconnected before
        # its old connection was found dead, replaces a connection: say so.
        fleet.publish(self.device, "online", {"replaced": replaced} if replaced else None)
        delay = self._config["device.info_request_delay"]
        self._info_call = self._clock.callLater(delay, self._request_info)
        # Read the shadow after attaching: a desired change made from now on
        # is pushed through the router, one made before is in what we read.
        # The same store job records last_seen.
        d = fleet.store.device_connected(self.device_id, fleet.now())
        d.addCallback(self._connected)
        d.addErrback(self._log_failure, "recording last_seen and reading the shadow")

    def stalled(self) -> None:
        """Our writes to the device fill its connection's buffers: take no
        more calls until they drain, and drop the device if they do not
        drain in time (then the calls in flight fail too)."""
        if self._stall_timer is not None or self._closed or self._dropped:
            return
        self._stall_timer = self._clock.callLater(
            self._config["device.write_stall_timeout"], self._stall_expired
        )

    def unstalled(self) -> None:
        if self._stall_timer is not None:
            if self._stall_timer.active():
                self._stall_timer.cancel()
            self._stall_timer = None

    def _stall_expired(self) -> None:
        self._stall_timer = None
        self._dropped = True
        log.warn("device {id} dropped: it did not read for {t} s", id=self.device_id,
                 t=self._config["device.write_stall_timeout"])
        self.disconnect(closecodes.NOT_READING, "not reading: dropped")

    def closed(self, reason: str) -> None:
        """The connection is gone, for C{reason}; or for the one dashd gave
        when it closed it (what the device answers with, e.g. 1000, says
        nothing)."""
        if self._closed:
            return
        reason = self._ended_by or reason
        self._closed = True
        self.closing = True
        self.unstalled()
        if self._info_call is not None and self._info_call.active():
            self._info_call.cancel()
        self._fail_pending(reason)
        held = self.fleet.router.detach(self)
        if isinstance(held, Deferred):
            # In a cluster, once Redis says whether this connection still
            # held the device (dashd.cluster.node.Cluster.detach).
            held.addCallback(self._detached, reason)
        else:
            self._detached(held, reason)

    def _detached(self, held: bool, reason: str) -> None:
        if not held:
            return
        fleet = self.fleet
        log.info("device {id} offline: {reason}", id=self.device_id, reason=reason)
        fleet.publish(self.device, "offline", {"reason": reason})
        fleet.store.touch(self.device_id, fleet.now()).addErrback(
            self._log_failure, "recording last_seen"
        )

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for call in pending.values():
            call.timer.cancel()
            call.deferred.errback(
                Offline(
                    "device %s disconnected before answering %s (%s)"
                    % (self.device_id, call.method, reason)
                )
            )

    @property
    def pending_count(self) -> int:
        """Calls sent and not answered yet."""
        return len(self._pending)

    # ISession

    def replaced(self, by: str) -> None:
        reason = "replaced by %s" % by
        log.info("device {id}: the connection from {peer} is {reason}", id=self.device_id,
                 peer=self.peer, reason=reason)
        self.closing = True
        self._ended_by = reason
        self._fail_pending(reason)
        self._close(closecodes.REPLACED, reason)

    def disconnect(self, code: int, reason: str) -> None:
        self.closing = True
        self._ended_by = reason
        self._fail_pending(reason)
        self._close(code, reason)

    def device_changed(self, device: Device) -> None:
        self.device = device

    def desired_changed(self, document: dict[str, Any]) -> None:
        self._send_delta(document)

    def call(self, method: str, params: Any, timeout: float,
             announce: bool = False) -> Deferred[Any]:
        """Send a call; C{announce}: once sent, tell subscribers
        (``rpc.in.METHOD``); a call refused before it was sent is not."""
        if self._closed or self.closing:
            return fail(Offline("device %s is offline" % self.device_id))
        if self._stall_timer is not None:
            return fail(Stalled(
                "device %s is not reading its connection; try again later" % self.device_id))
        limit = self._config["device.max_calls_in_flight"]
        if len(self._pending) >= limit:
            return fail(Busy("device %s already has %d calls in flight" % (self.device_id, limit),
                             retry_after=1))
        self._next_id += 1
        call_id = self._next_id
        frame = frames.encode_request(call_id, method, params, self.src)
        size = len(frame.encode("utf-8"))
        limit = self._config["device.max_message_bytes"]
        if size > limit:
            return fail(TooLarge(
                "the call to %s would be a %d-byte message, more than the device channel's "
                "limit of %d bytes" % (method, size, limit)))
        d: Deferred[Any] = Deferred(lambda _: self._forget(call_id))
        timer = self._clock.callLater(timeout, self._timed_out, call_id, timeout)
        self._pending[call_id] = _PendingCall(method, d, timer)
        try:
            self._send(frame)
        except Exception:
            # Nothing may stay pending that nobody will ever answer.
            self._forget(call_id)
            raise
        if announce:
            self.fleet.publish(self.device, "rpc.in." + method, params)
        return d

    def _forget(self, call_id: int) -> None:
        # The caller gave up (e.g. the HTTP client went away).
        call = self._pending.pop(call_id, None)
        if call is not None:
            call.timer.cancel()

    def _timed_out(self, call_id: int, timeout: float) -> None:
        call = self._pending.pop(call_id, None)
        if call is not None:
            call.deferred.errback(
                TimedOut(
                    "device %s did not answer %s within %g s"
                    % (self.device_id, call.method, timeout)
                )
            )

    # Frames from the device

    def received(self, value: Any) -> None:
        """One JSON value read from the device channel."""
        try:
            frame = frames.parse_frame(value)
        except frames.InvalidFrame as e:
            if self._admit(e.id, e.src):
                self.reply_error(e.id, frames.INVALID_REQUEST, str(e), e.src)
            return
        if isinstance(frame, frames.Response):
            # Answers to dashd's own calls, which bound them: not counted.
            self._response(frame)
            return
        if not self._admit(frame.id, frame.src):
            return
        if frame.src:
            self.src = frame.src
        handler = self._HANDLERS.get(frame.method)
        if handler is not None:
            handler(self, frame)
        elif frame.id is None:
            self._publish_out(frame.method, frame.params)
        else:
            self.reply_error(
                frame.id, frames.METHOD_NOT_FOUND, "method not found: %s" % frame.method
            )

    # The device's own limit

    def _admit(self, frame_id: Any, src: str | None) -> bool:
        """Take a token for a frame from the device; without one the frame
        is dropped: answered (if it has an id) and logged as the device's own
        excess, and the device is closed if it keeps far over its limit."""
        if self._rate <= 0:
            return True
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.fleet.frames_limited += 1
        if now - self._window_start >= ABUSE_WINDOW:
            self._window_start = now
            self._window_drops = 0
        self._window_drops += 1
        limit = "%g frames a second (bursts of %g)" % (self._rate, self._burst)
        if self._window_drops > max(self._burst, SUSTAINED_FACTOR * self._rate * ABUSE_WINDOW):
            if not self.closing:
                log.warn("device {id} closed: it kept sending far over its limit of {limit} "
                         "({count} frames dropped within {window} s)", id=self.device_id,
                         limit=limit, count=self._window_drops, window=ABUSE_WINDOW)
                self.disconnect(closecodes.TOO_FAST, "far over the frame rate limit")
            return False
        self._dropped_frame("it is over its limit of %s" % limit)
        if frame_id is not None:
            self.reply_error(frame_id, frames.TOO_MANY,
                             "over this device's limit of %s: frame dropped" % limit, src)
        return False

    def _dropped_frame(self, why: str) -> None:
        """Log a frame of the device's dropped for its own excess: the
        first, then a count at most every WARN_EVERY seconds."""
        self._unlogged_drops += 1
        now = self._clock.seconds()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
            log.warn("device {id}: {count} of its frames dropped: {why} (answered with "
                     "error 429 when they had an id)", id=self.device_id,
                     count=self._unlogged_drops, why=why)
            self._warned_at = now
            self._unlogged_drops = 0

    def reply(self, frame: frames.Request, result: Any) -> None:
        if frame.id is not None and not self._closed:
            self._send(frames.encode_result(frame.id, result, frame.src or self.src))

    def reply_error(
        self, frame_id: Any, code: int, message: str, dst: str | None = None
    ) -> None:
        if not self._closed:
            self._send(frames.encode_error(frame_id, code, message, dst or self.src))

    def _response(self, response: frames.Response) -> None:
        call = self._pending.pop(response.id, None)  # type: ignore[arg-type]
        if call is None:
            # A late answer to a call that timed out, or to one never made:
            # responses are never answered.
            log.debug(
                "device {id} answered unknown call {call_id}",
                id=self.device_id,
                call_id=response.id,
            )
            return
        call.timer.cancel()
        if response.error is not None:
            call.deferred.errback(
                DeviceFailed(response.error["message"], response.error["code"])
            )
        else:
            call.deferred.callback(response.result)

    def _publish_out(self, method: str, params: Any) -> None:
        name = method[len("Dash."):] if method.startswith("Dash.") else method
        self.fleet.publish(self.device, "rpc.out." + name, params)

    def _store_call(self, frame: frames.Request) -> bool:
        """Whether the device may have one more call wait for the store;
        if not, it is answered with error 429."""
        if self._store_calls >= MAX_STORE_CALLS_IN_FLIGHT:
            message = ("this device already has %d calls waiting for the store; wait for "
                       "their answers" % MAX_STORE_CALLS_IN_FLIGHT)
            if frame.id is not None:
                self.reply_error(frame.id, frames.TOO_MANY, message, frame.src)
            self._dropped_frame(message)
            return False
        return True

    def _answer(self, frame: frames.Request, d: Deferred[Any], result: Callable[[Any], Any]) -> None:
        """Reply once the store has acknowledged, or with the error."""
        self._store_calls += 1

        # One step of the chain each way, the count of calls waiting for
        # the store taken down first.
        def ok(value: Any) -> None:
            self._store_calls -= 1
            self.reply(frame, result(value))

        def failed(failure: Failure) -> None:
            self._store_calls -= 1
            if failure.check(shadow.VersionConflict):
                self.reply_error(frame.id, frames.CONFLICT, failure.getErrorMessage(), frame.src)
            elif failure.check(shadow.ShadowTooLarge):
                self.reply_error(frame.id, frames.TOO_LARGE, failure.getErrorMessage(), frame.src)
            elif failure.check(shadow.InvalidShadowUpdate):
                self.reply_error(
                    frame.id, frames.INVALID_PARAMS, failure.getErrorMessage(), frame.src
                )
            elif failure.check(NotFound):
                self.disconnect(closecodes.DELETED, "device deleted")
            elif failure.check(StoreError):
                self.reply_error(frame.id, frames.UNAVAILABLE, failure.getErrorMessage(), frame.src)
            else:
                log.failure("handling {method} from {id}", failure,
                            method=frame.method, id=self.device_id)
                self.reply_error(frame.id, frames.INTERNAL_ERROR, "internal error", frame.src)

        d.addCallbacks(ok, failed)

    # The device's own calls

    def _heartbeat(self, frame: frames.Request) -> None:
        if not self._store_call(frame):
            return
        self._heard_info = True
        info = frame.params if isinstance(frame.params, dict) else {}
        self._publish_out(frame.method, frame.params)
        self._answer(frame, self._record_info(info), lambda _: True)

    def _record_info(self, info: dict[str, Any]) -> Deferred[Any]:
        d = self.fleet.record_info(self.device_id, info)

        def keep(device: Device) -> Device:
            # Kept for as long as the device is connected, by thousands of
            # devices alike (their info and shadow: the same keys, mostly
            # the same firmware names and versions): one copy of each key
            # and short string for all (jsontext.shared), whichever store
            # parsed them. About 10 us a heartbeat.
            self.device = replace(device, info=jsontext.shared(device.info),
                                  shadow=jsontext.shared(device.shadow))
            self._became_ready()
            return device

        return d.addCallback(keep)

    def _became_ready(self) -> None:
        """dashd has the device's info (or asking for it failed): once a
        connection, tell the fleet (queued calls go out from then on)."""
        if self._ready or self._closed or self.closing:
            return
        self._ready = True
        self.fleet.ready(self)

    def _shadow_update(self, frame: frames.Request) -> None:
        if not self._store_call(frame):
            return
        try:
            update = shadow.parse_device_update(frame.params)
        except shadow.InvalidShadowUpdate as e:
            self.reply_error(frame.id, frames.INVALID_PARAMS, str(e), frame.src)
            return
        d = self.fleet.update_shadow(self.device_id, update, save_data=True)
        self._answer(frame, d, lambda r: {"version": r[1].document["version"]})

    def _state_set(self, frame: frames.Request) -> None:
        # The mDash device library reports state this way (e.g. OTA
        # progress); Cesanta's mjson shadow sketches send Shadow.Report.
        if not isinstance(frame.params, dict):
            self.reply_error(frame.id, frames.INVALID_PARAMS, "params must be an object", frame.src)
            return
        if not self._store_call(frame):
            return
        update = shadow.ShadowUpdate(patches={"reported": frame.params})
        d = self.fleet.update_shadow(self.device_id, update, save_data=True)
        self._answer(frame, d, lambda _: True)

    def _data(self, frame: frames.Request) -> None:
        # mgos_dash_send_data: data to keep, as data points (and an event).
        if not self._store_call(frame):
            return
        self._publish_out(frame.method, frame.params)
        d = self.fleet.store_data(self.device, frame.params)
        self._answer(frame, d, lambda _: True)

    def _shadow_get(self, frame: frames.Request) -> None:
        if not self._store_call(frame):
            return

        def view(device: Device | None) -> Any:
            if device is None:
                raise NotFound(self.device_id)
            return shadow.view(device.shadow, include_tags=False)

        self._answer(frame, self.fleet.store.get_device(self.device_id), view)

    def _log(self, frame: frames.Request) -> None:
        self._publish_out(frame.method, frame.params)
        self.reply(frame, True)

    _HANDLERS: dict[str, Callable[[DeviceSession, frames.Request], None]] = {
        "Dash.Heartbeat": _heartbeat,
        "Dash.Shadow.Update": _shadow_update,
        "Dash.Shadow.Get": _shadow_get,
        "Dash.Log": _log,
        "Dash.Data": _data,
        "State.Set": _state_set,
        "Shadow.Report": _state_set,
    }

    # Calls dashd makes on its own

    def _request_info(self) -> None:
        self._info_call = None
        if self._heard_info or self._closed:
            return
        if (self._unread is not None and self._info_waits < self.MAX_INFO_WAITS
                and self._unread()):
            # The device has sent something dashd has not read yet, as in a
            # connect storm, when dashd reads thousands of new connections
            # behind: most likely its heartbeat, with the info. Asking now
            # would add a call to every such device exactly when dashd is
            # furthest behind; wait for it to be read first.
            self._info_waits += 1
            self._info_call = self._clock.callLater(
                self._config["device.info_request_delay"], self._request_info)
            return
        d = self.call("Sys.GetInfo", None, self._config["rpc.default_timeout"])

        def got(info: Any) -> Deferred[Any] | None:
            if isinstance(info, dict):
                return self._record_info(info)
            self._became_ready()
            return None

        def no_info(failure: Failure) -> None:
            self._log_failure(failure, "asking for Sys.GetInfo", expected=True)
            self._became_ready()

        d.addCallback(got)
        d.addErrback(no_info)

    def _connected(self, found: tuple[Device, dict[str, Any] | None] | None) -> None:
        if found is None:
            return
        device, pull = found
        self._send_delta(device.shadow)
        self.fleet.connected(device, pull)

    def _send_delta(self, document: dict[str, Any]) -> None:
        if self._delta_unsupported or self._closed:
            return
        delta = shadow.delta(document["state"]["desired"], document["state"]["reported"])
        if not delta:
            return
        d = self.call(
            "Shadow.Delta",
            {"state": delta, "version": document["version"]},
            self._config["rpc.default_timeout"],
        )

        def applied(result: Any) -> Deferred[Any] | None:
            # An object answer is the part of the delta the device applied
            # (the public Mongoose OS device simulator answers with the state
            # it was given): it is now reported. null or true change nothing.
            if isinstance(result, dict) and result:
                update = shadow.ShadowUpdate(patches={"reported": result})
                return self.fleet.update_shadow(self.device_id, update, save_data=True)
            return None

        def unsupported(failure: Failure) -> None:
            if failure.check(DeviceFailed) and failure.value.code in frames.NOT_IMPLEMENTED:
                # Fine: remember it for this connection, so no retry storm.
                self._delta_unsupported = True
                return
            self._log_failure(failure, "sending Shadow.Delta", expected=True)

        d.addCallback(applied)
        d.addErrback(unsupported)

    def _log_failure(self, failure: Failure, doing: str, expected: bool = False) -> None:
        if failure.check(CancelledError):
            return
        if expected or failure.check(Offline, TimedOut, DeviceFailed, StoreError):
            log.info(
                "device {id}: {doing} failed: {error}",
                id=self.device_id,
                doing=doing,
                error=failure.getErrorMessage(),
            )
        else:
            log.failure("device {id}: {doing}", failure, id=self.device_id, doing=doing)
