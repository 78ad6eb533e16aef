"""
Queued calls (L{dashd.domain.calls}): the use cases (L{Calls}: queue one,
read them, cancel one) and their delivery (L{CallDelivery}).

Delivery. A call is stored ``queued`` wherever it was made; the node that
holds its device sends it, once dashd has the device's info (its
``Dash.Heartbeat``, or the answer to ``Sys.GetInfo``, or that answer's
failure): the device's handshake is never held up by its queue. The
router tells every node a call was queued (in a cluster, a message to all
of them); the one holding the device takes it. A device's calls are taken
in the order they were made, at most ``calls.in_flight_per_device`` at a
time, and at most ``calls.sends_at_once`` over all devices of a node:
devices waiting for room take turns, so one with thousands queued never
holds up the others.

Taking a call is a store job that records it ``sent`` by this node and
connection (its claim) before the frame goes out; only that claim may end
the attempt, once. So a call goes out once, whichever node it was made
on, even while its device moves between nodes. What ends an attempt: the
device's answer (``succeeded``, ``failed``), its timeout (``timed_out``),
or the connection going before an answer (``lost``). A frame that never
went out (the connection was closing, or full) puts the call back in the
queue, its attempt undone.

Every ``calls.sweep_interval`` a sweep expires the queued calls past their
deadline, marks ``lost`` the sent calls whose node is gone (a restart or
kill -9 of a single dashd: every call its previous run had sent; in a
cluster: those of a dead node), and wakes the delivery of the devices held
here that have queued calls (a missed message, a retry).

Each change is published as ``call.status`` (the call as the API shows it)
and a call's end is kept in the audit log.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dashd.app.devices import MAX_METHOD_LENGTH, Devices
from dashd.app.fleet import Fleet
from dashd.domain import access, tokens
from dashd.domain import calls as c
from dashd.domain.calls import Call
from dashd.domain.errors import (
    Busy,
    Conflict,
    DeviceFailed,
    DomainError,
    Forbidden,
    Invalid,
    NotFound,
    Offline,
    Stalled,
    TimedOut,
    TooLarge,
)
from dashd.domain.model import UNSET, ApiKey, Device
from dashd.jsontext import compact
from dashd.store import NotFound as NoSuchRecord
from dashd.store import calls_sql

log = Logger()

MAX_LIST = 500
DEFAULT_LIST = 50
# Seconds past its timeout after which a sent call not ended is lost,
# whoever sent it (its node wedged, or its answer could not be stored).
SENT_GRACE = 30.0
# Seconds before a device whose calls were refused as busy is tried again.
BUSY_RETRY = 1.0
# Seconds the end of a call waits for others, to be stored with them.
END_WAIT = 0.01
# The status the audit log records for the end of a queued call.
AUDIT_STATUS = {c.SUCCEEDED: 200, c.FAILED: 502, c.TIMED_OUT: 504, c.LOST: 503,
                c.EXPIRED: 410}


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise Invalid("%s must be a number of seconds" % name, name)
    return float(value)


class Calls:
    """The use cases of queued calls."""

    def __init__(self, fleet: Fleet, devices: Devices) -> None:
        self._fleet = fleet
        self._store = fleet.store
        self._devices = devices
        self._config = fleet.config

    async def queue(self, by: ApiKey, device_id: str, method: Any, params: Any = None,
                    expires_in: Any = UNSET, expires_at: Any = UNSET, timeout: Any = UNSET,
                    retry: Any = UNSET) -> Call:
        """Store a call of C{method} for the device, to be sent when it is
        online, until C{expires_in} seconds from now or the time
        C{expires_at}; fire with it (queued)."""
        config = self._config
        if not isinstance(method, str) or not method:
            raise Invalid("method must be a non-empty string", "method")
        if len(method) > MAX_METHOD_LENGTH:
            raise Invalid("method names are at most %d characters" % MAX_METHOD_LENGTH,
                          "method")
        now = self._fleet.now()
        longest = config["calls.max_expires_in"]
        if expires_in is not UNSET and expires_at is not UNSET:
            raise Invalid("give expires_in or expires_at, not both", "expires_in")
        if expires_at is not UNSET:
            expires = _number(expires_at, "expires_at")
            if not now < expires <= now + longest:
                raise Invalid("expires_at must be a time (seconds since the epoch) after now "
                              "and at most %g s from now" % longest, "expires_at")
        else:
            wait = config["calls.default_expires_in"] if expires_in is UNSET else _number(
                expires_in, "expires_in")
            if not 0 < wait <= longest:
                raise Invalid("expires_in must be more than 0 and at most %g seconds"
                              % longest, "expires_in")
            expires = now + wait
        if timeout is UNSET:
            seconds = config["rpc.default_timeout"]
        else:
            seconds = _number(timeout, "timeout")
            if not 0 < seconds <= config["rpc.max_timeout"]:
                raise Invalid("timeout must be more than 0 and at most %g seconds"
                              % config["rpc.max_timeout"], "timeout")
        retries = 0 if retry is UNSET else retry
        if isinstance(retries, bool) or not isinstance(retries, int) \
                or not 0 <= retries <= config["calls.max_retries"]:
            raise Invalid("retry must be a whole number from 0 to %d: how many times the call "
                          "may be sent again after it timed out or was lost"
                          % config["calls.max_retries"], "retry")
        size = len(compact(params).encode("utf-8"))
        if size > config["calls.max_params_bytes"]:
            raise TooLarge("params are %d bytes of JSON, more than the %d a queued call may "
                           "carry" % (size, config["calls.max_params_bytes"]))
        device = await self._devices.visible(by, device_id, live=True)
        access.check_rpc(by, device, method)
        call = Call(id=tokens.new_id("c"), device_id=device.id, account_id=by.account_id,
                    key_id=by.id, method=method, params=params, state=c.QUEUED, created=now,
                    expires=expires, timeout=seconds, retries=retries, times={c.QUEUED: now})
        try:
            call = await self._store.create_call(call, config["calls.max_queued_per_device"],
                                                 config["calls.max_queued_per_account"])
        except NoSuchRecord:
            raise NotFound("no such device: %s" % device_id)
        log.info("call {call} of {method} queued for {id} by {by}", call=call.id,
                 method=method, id=device.id, by=by.id)
        self._fleet.publish(device, "call.status", c.view(call))
        self._fleet.router.calls_queued(device.id)
        return call

    async def get(self, by: ApiKey, call_id: str) -> tuple[Call, Device]:
        """The call, if C{by} may see it: it sees the device and (a
        restricted key) may call the method."""
        call = await self._store.get_call(call_id)
        if call is None:
            raise NotFound("no such call: %s" % call_id)
        try:
            device = await self._devices.visible(by, call.device_id, live=True)
            if by.kind == access.RESTRICTED:
                access.check_rpc(by, device, call.method)
        except (NotFound, Forbidden):
            raise NotFound("no such call: %s" % call_id) from None
        return call, device

    async def list(self, by: ApiKey, device_id: str, states: tuple[str, ...] | None = None,
                   limit: int = DEFAULT_LIST, before: int | None = None,
                   ) -> tuple[list[Call], int | None]:
        """The device's calls, newest first (only those in C{states}), a
        page of C{limit} before seq C{before}; fire with them and where the
        next page starts (None: no more)."""
        if not 1 <= limit <= MAX_LIST:
            raise Invalid("limit must be 1 to %d" % MAX_LIST, "limit")
        if states is not None:
            unknown = [s for s in states if s not in c.STATES]
            if unknown or not states:
                raise Invalid("state must be a comma-separated list of %s" % ", ".join(c.STATES),
                              "state")
        device = await self._devices.visible(by, device_id, live=True)
        found = await self._store.list_calls(device.id, states, limit + 1, before)
        following = found[limit - 1].seq if len(found) > limit else None
        found = found[:limit]
        if by.kind == access.RESTRICTED:
            found = [call for call in found if _may_call(by, device, call.method)]
        return found, following

    async def cancel(self, by: ApiKey, call_id: str) -> tuple[Call, Device]:
        """Cancel a queued call; one already sent or ended is a conflict."""
        call, device = await self.get(by, call_id)
        access.check_rpc(by, device, call.method)
        now = self._fleet.now()
        after = await self._store.cancel_call(call.id, now)
        if after is None:
            raise NotFound("no such call: %s" % call_id)
        if after.state == c.CANCELLED and after.finished == now:
            log.info("call {call} cancelled by {by}", call=call.id, by=by.id)
            self._fleet.publish(device, "call.status", c.view(after))
            return after, device
        if after.state == c.SENT:
            raise Conflict("call %s was sent to the device at %s: it can no longer be cancelled"
                           % (call.id, after.sent))
        if after.state == c.QUEUED:  # pragma: no cover - cancel_call cancels a queued one
            raise Conflict("call %s could not be cancelled now; try again" % call.id)
        raise Conflict("call %s has ended (%s): there is nothing to cancel"
                       % (call.id, after.state))


def _may_call(by: ApiKey, device: Device, method: str) -> bool:
    try:
        access.check_rpc(by, device, method)
    except Forbidden:
        return False
    return True


class _Gather:
    """Store jobs of one kind (a claim, an end) asked for in the same
    reactor turn, run as one store job: one transaction and one trip to the
    store's thread for all of them (L{calls_sql.each}), at most C{most} a
    batch; C{wait}: seconds the first waits for others to join it. Each caller gets its own result, or its own failure. On a store
    without C{alarms_job} (which runs any such job), each runs alone."""

    def __init__(self, clock: IReactorTime, store: Any, job: Callable[..., Any],
                 alone: Callable[..., Deferred[Any]], key: Callable[[tuple[Any, ...]], str],
                 most: int = 250, wait: float = 0.0) -> None:
        self._clock = clock
        self._store = store
        self._job = job
        self._alone = alone
        self._key = key
        self._most = most
        self._wait = wait
        self._pending: list[tuple[tuple[Any, ...], Deferred[Any]]] = []
        self._later: Any = None
        self.batches = 0

    def __call__(self, *args: Any) -> Deferred[Any]:
        if not hasattr(self._store, "alarms_job"):
            return self._alone(*args)
        d: Deferred[Any] = Deferred()
        self._pending.append((args, d))
        if len(self._pending) >= self._most:
            self._flush()
        elif self._later is None:
            self._later = self._clock.callLater(self._wait, self._flush)
        return d

    def _flush(self) -> None:
        if self._later is not None and self._later.active():
            self._later.cancel()
        self._later = None
        items, self._pending = self._pending, []
        if not items:
            return
        # Rows locked in one order (by device, by call) whoever batches them:
        # two nodes' batches cannot deadlock; a device's own keep their order.
        items.sort(key=lambda item: self._key(item[0]))
        self.batches += 1
        done = self._store.alarms_job(calls_sql.each, self._job, [a for a, _ in items])

        def ran(results: list[Any]) -> None:
            for (_, d), result in zip(items, results):
                if isinstance(result, calls_sql.Refused):
                    d.errback(Failure(result.error))
                else:
                    d.callback(result)

        def failed(failure: Failure) -> None:
            for _, d in items:
                d.errback(failure)

        done.addCallbacks(ran, failed)


@dataclass(eq=False)
class _Pump:
    """The delivery of one device's queued calls through one connection."""

    session: Any
    claim: str
    in_flight: int = 0
    claiming: bool = False
    again: bool = False
    waiting: bool = False
    stopped: bool = False
    retry: Any = None
    sent: list[str] = field(default_factory=list)

    @property
    def device_id(self) -> str:
        return str(self.session.device_id)


class CallDelivery:
    """Sends queued calls to the devices held here (see the module's doc).
    L{device_ready} and L{device_event} are fleet observers, L{calls_queued}
    a router observer, L{sweep} runs on a timer; the builder connects them."""

    def __init__(self, fleet: Fleet, clock: IReactorTime,
                 audit: Callable[[dict[str, Any]], None] | None = None) -> None:
        config = fleet.config
        self._fleet = fleet
        self._store = fleet.store
        self._router = fleet.router
        self._clock = clock
        self._audit = audit
        self._window = config["calls.in_flight_per_device"]
        self._at_once = config["calls.sends_at_once"]
        self._pumps: dict[str, _Pump] = {}
        # Devices that may have queued calls (every node hears of each
        # queued call; the sweep adds what was missed): a device that
        # connects without any costs no store job.
        self._queued: set[str] = set()
        self._in_flight = 0
        self._waiting: deque[_Pump] = deque()
        self._serial = itertools.count(1)
        self._sweeping = False
        self._since = clock.seconds()
        # Claims and ends of a reactor turn go to the store together.
        self._claim = _Gather(clock, self._store, calls_sql.claim, self._store.claim_calls,
                              lambda args: args[0])
        # The answers of many devices come in turns of their own: an end
        # waits END_WAIT for others (its call.status event as long).
        self._end_call = _Gather(clock, self._store, calls_sql.end, self._store.end_call,
                                 lambda args: args[0], wait=END_WAIT)
        # Read by dashd.ops.metrics and the tests.
        self.sent = 0
        self.ended: dict[str, int] = {}

    # Observers

    def device_ready(self, session: Any) -> None:
        """A connection held here has told dashd its info: deliver its
        device's queued calls through it."""
        old = self._pumps.get(session.device_id)
        if old is not None:
            self._stop(old)
        pump = _Pump(session, "%s/%d" % (self._router.node_id, next(self._serial)))
        self._pumps[session.device_id] = pump
        if session.device_id in self._queued:
            self._fill(pump)

    # The names of the events L{device_event} acts on.
    DEVICE_EVENTS = ("offline",)

    def device_event(self, event: Any) -> None:
        """A fleet event observer: a device that went offline has no pump."""
        if event.name == "offline":
            pump = self._pumps.get(event.device_id)
            if pump is not None and pump.session.closing:
                self._stop(pump)

    def calls_queued(self, device_id: str) -> None:
        """A router observer: calls were queued for the device (on any node)."""
        self._queued.add(device_id)
        pump = self._pumps.get(device_id)
        if pump is not None:
            self._kick(pump)

    # The pumps

    def _live(self, pump: _Pump) -> bool:
        if pump.stopped:
            return False
        if pump.session.closing or self._pumps.get(pump.device_id) is not pump:
            self._stop(pump)
            return False
        return True

    def _stop(self, pump: _Pump) -> None:
        pump.stopped = True
        if self._pumps.get(pump.device_id) is pump:
            del self._pumps[pump.device_id]
        if pump.waiting:
            pump.waiting = False
            try:
                self._waiting.remove(pump)
            except ValueError:
                pass
        if pump.retry is not None and pump.retry.active():
            pump.retry.cancel()
        pump.retry = None

    def _kick(self, pump: _Pump) -> None:
        if pump.claiming:
            pump.again = True
            return
        self._fill(pump)

    def _fill(self, pump: _Pump, turn: bool = False) -> None:
        """Take as many of the device's queued calls as there is room for
        (C{turn}: it is this device's turn among those waiting)."""
        if not self._live(pump) or pump.claiming or pump.waiting:
            return
        room = self._window - pump.in_flight
        if room <= 0:
            return
        free = self._at_once - self._in_flight
        if free <= 0 or (self._waiting and not turn):
            # Its turn comes after the devices already waiting.
            pump.waiting = True
            self._waiting.append(pump)
            return
        wanted = min(room, free)
        pump.claiming = True
        pump.again = False
        pump.in_flight += wanted
        self._in_flight += wanted
        d = self._claim(pump.device_id, pump.claim, self._fleet.now(), wanted)

        def claimed(outcome: tuple[list[Call], list[Call]]) -> None:
            taken, expired = outcome
            unused = wanted - len(taken)
            pump.in_flight -= unused
            self._in_flight -= unused
            pump.claiming = False
            device = pump.session.device
            for call in expired:
                self._changed(device, call)
            for call in taken:
                self._changed(device, call)
                self._send(pump, call)
            if len(taken) == wanted or pump.again:
                self._kick(pump)
            elif pump.in_flight == 0:
                # Nothing left to send (until it hears of more).
                self._queued.discard(pump.device_id)
            if unused:
                self._next_waiting()

        def failed(failure: Failure) -> None:
            pump.in_flight -= wanted
            self._in_flight -= wanted
            pump.claiming = False
            log.info("device {id}: taking its queued calls failed: {error}; trying again at "
                     "the next sweep", id=pump.device_id, error=failure.getErrorMessage())
            self._next_waiting()

        d.addCallbacks(claimed, failed)
        d.addErrback(lambda f: log.failure("delivering queued calls", f))

    def _next_waiting(self) -> None:
        while self._waiting and self._in_flight < self._at_once:
            pump = self._waiting.popleft()
            pump.waiting = False
            self._fill(pump, turn=True)
            if pump.waiting:  # it went back at the end: nothing more fits
                break

    def _done(self, pump: _Pump) -> None:
        pump.in_flight -= 1
        self._in_flight -= 1
        if self._waiting:
            # The devices waiting go first; this one takes its turn after them.
            self._next_waiting()
        self._kick(pump)

    def _send(self, pump: _Pump, call: Call) -> None:
        session = pump.session
        attempt = len(call.attempts)
        d: Deferred[Any]
        if session.closing:
            d = Deferred()
            d.errback(Offline("the connection is closing"))
        else:
            try:
                d = session.call(call.method, call.params, call.timeout)
            except Exception as e:
                log.failure("sending queued call {call}", call=call.id)
                d = Deferred()
                d.errback(Offline("the call could not be sent: %s" % e))
        if d.called:
            # Refused before anything was written: not an attempt.
            outcome: list[Any] = []
            d.addBoth(outcome.append)
            error = outcome[0].value if isinstance(outcome[0], Failure) else None
            if isinstance(error, TooLarge):
                self._end(pump, call, attempt, c.FAILED, None,
                          {"code": 413, "message": error.message})
                return
            self._unsend(pump, call, error)
            return
        self.sent += 1
        pump.sent.append(call.id)
        self._fleet.publish(session.device, "rpc.in." + call.method, call.params)
        for observer in self._fleet.call_observers:
            observer(d)

        def answered(result: Any) -> None:
            self._end(pump, call, attempt, c.SUCCEEDED, result, None)

        def failed(failure: Failure) -> None:
            e = failure.value
            if isinstance(e, DeviceFailed):
                self._end(pump, call, attempt, c.FAILED, None,
                          {"code": e.code, "message": e.message})
            elif isinstance(e, TimedOut):
                self._end(pump, call, attempt, c.TIMED_OUT, None,
                          {"code": 504, "message": e.message})
            elif isinstance(e, DomainError):
                self._end(pump, call, attempt, c.LOST, None, {"code": 503, "message": e.message})
            else:
                log.failure("queued call {call}", failure, call=call.id)
                self._end(pump, call, attempt, c.LOST, None,
                          {"code": 503, "message": "internal error"})

        d.addCallbacks(answered, failed)

    def _unsend(self, pump: _Pump, call: Call, error: Any) -> None:
        d = self._store.unsend_call(call.id, pump.claim)

        def undone(after: Call | None) -> None:
            if after is not None:
                self._changed(pump.session.device, after)
            pump.in_flight -= 1
            self._in_flight -= 1
            self._next_waiting()
            if isinstance(error, (Busy, Stalled)) and self._live(pump):
                # The device has its hands full: try again shortly.
                pump.retry = self._clock.callLater(BUSY_RETRY, self._retry, pump)

        d.addCallback(undone)
        d.addErrback(lambda f: log.info("queued call {call}: putting it back failed: {error}",
                                        call=call.id, error=f.getErrorMessage()))

    def _retry(self, pump: _Pump) -> None:
        pump.retry = None
        self._kick(pump)

    def _end(self, pump: _Pump, call: Call, attempt: int, state: str, result: Any,
             error: dict[str, Any] | None) -> None:
        d = self._end_call(call.id, attempt, pump.claim, state, self._fleet.now(), result,
                           error)

        def ended(after: Call | None) -> None:
            if after is not None:
                self._changed(pump.session.device, after)
            self._done(pump)

        def not_stored(failure: Failure) -> None:
            # The sweep finds it sent and not ended: lost.
            log.info("queued call {call}: its end could not be stored: {error}",
                     call=call.id, error=failure.getErrorMessage())
            self._done(pump)

        d.addCallbacks(ended, not_stored)
        d.addErrback(lambda f: log.failure("ending queued call {call}", f, call=call.id))

    def _changed(self, device: Device, call: Call) -> None:
        """Tell subscribers (and, at its end, the audit log)."""
        self._fleet.publish(device, "call.status", c.view(call))
        if call.final:
            self.ended[call.state] = self.ended.get(call.state, 0) + 1
            if self._audit is not None and call.state in AUDIT_STATUS:
                message = (call.error or {}).get("message") if call.state != c.SUCCEEDED \
                    else None
                if call.state == c.EXPIRED:
                    message = "expired before its device was online"
                self._audit({"t": self._fleet.now(), "account_id": call.account_id,
                             "key_id": call.key_id, "method": "CALL",
                             "path": "/api/v2/calls/%s (%s)" % (call.id, call.method),
                             "device_id": call.device_id, "status": AUDIT_STATUS[call.state],
                             "error": message})
        elif call.state == c.QUEUED and call.attempts:
            # Queued again to be retried: its device may be here.
            self._queued.add(call.device_id)
            pump = self._pumps.get(call.device_id)
            if pump is not None and pump.session.device.id == device.id:
                self._kick(pump)

    # The sweep

    def sweep(self) -> Deferred[Any]:
        """Expire, find the lost, wake the queues (see the module's doc)."""
        if self._sweeping:
            return succeed(None)
        self._sweeping = True
        d = ensureDeferred(self._sweep())
        d.addErrback(lambda f: log.info("sweeping queued calls: {error}",
                                        error=f.getErrorMessage()))

        def done(result: Any) -> Any:
            self._sweeping = False
            return result

        return d.addBoth(done)

    async def _sweep(self) -> None:
        now = self._fleet.now()
        devices: dict[str, Device | None] = {}

        async def device(device_id: str) -> Device | None:
            if device_id not in devices:
                devices[device_id] = await self._store.get_device(device_id)
            return devices[device_id]

        for call in await self._store.expire_calls(now):
            found = await device(call.device_id)
            if found is not None:
                self._changed(found, call)
        settle = float(getattr(self._router, "settle", 0.0))
        for call in await self._store.sent_calls(now - settle):
            node = (call.claim or "").split("/", 1)[0]
            if node == self._router.node_id:
                pump = self._pumps.get(call.device_id)
                if pump is not None and pump.claim == call.claim \
                        and now < (call.sent or 0) + call.timeout + SENT_GRACE:
                    continue  # under way here
            elif (self._router.node_alive(node) or now - self._since < settle) \
                    and now < (call.sent or 0) + call.timeout + SENT_GRACE:
                # Under way on a node that lives (or, just after this node
                # started, one it may not have heard of yet).
                continue
            why = "the node that sent it is gone" if node != self._router.node_id else \
                "its connection is gone"
            after = await self._store.end_call(
                call.id, len(call.attempts), call.claim or "", c.LOST, now, None,
                {"code": 503, "message": "sent, then %s before an answer: whether the device "
                                         "did it is unknown" % why})
            found = await device(call.device_id)
            if after is not None and found is not None:
                self._changed(found, after)
                if after.state == c.QUEUED:
                    self._router.calls_queued(call.device_id)
        for device_id in await self._store.queued_devices():
            self._queued.add(device_id)
            pump = self._pumps.get(device_id)
            if pump is not None:
                self._kick(pump)

    # Metrics

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def devices_waiting(self) -> int:
        return len(self._waiting)
