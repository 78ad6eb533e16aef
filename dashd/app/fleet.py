"""
The fleet: the live side of devices, shared by every use case and by the
device sessions: publishing what happens (to the hub and the observers),
applying shadow changes and the info devices report, and calling devices
wherever they are connected.

Use cases (L{dashd.app.devices}) and the device sessions both go through
L{Fleet}, so that a shadow change publishes the same notification and
reaches the device the same way whether a user or the device itself made
it.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Collection

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dashd.channel.hub import IHub
from dashd.channel.router import IRouter
from dashd.config import Config
from dashd.domain import shadow, timeseries
from dashd.domain.errors import Offline
from dashd.domain.events import Event, LazyEvent
from dashd.domain.model import Device
from dashd.store import IStore

log = Logger()

# Which keys of Dash.Heartbeat's params describe the firmware; they are kept
# in the shadow as reported.ota (the other ones change all the time and stay
# in the device's info only).
FIRMWARE_KEYS = ("app", "arch", "fw_version", "fw_id")


# Event names whose observers L{Fleet} remembers (the others are looked up
# on each event).
MAX_EVENT_NAMES = 1000


class Fleet:
    def __init__(
        self,
        store: IStore,
        router: IRouter,
        hub: IHub,
        clock: IReactorTime,
        config: Config,
    ) -> None:
        self.store = store
        self.router = router
        self.hub = hub
        self.clock = clock
        self.config = config
        # Who else hears of what happens: every published event (the stored
        # history, dashd.app.history) and every info a device gives about itself
        # (firmware updates, dashd.app.firmware). Observers must not block or raise.
        self.event_observers: list[Callable[[Event], None]] = []
        # Observers of some events only (L{observe_events}), in the order
        # they were added, and who is told of each name (found when an
        # event of that name is first published).
        self._named: list[tuple[Callable[[str], bool], Callable[[Event], None]]] = []
        self._by_name: dict[str, tuple[Callable[[Event], None], ...]] = {}
        self.info_observers: list[Callable[[Device, dict[str, Any]], None]] = []
        # Each device that connected, with its pull record (dashd.app.datapull).
        self.connect_observers: list[Callable[[Device, dict[str, Any] | None], None]] = []
        # Each connection held here once dashd has its device's info (or
        # asking for it failed): queued calls go out then (dashd.app.calls).
        self.ready_observers: list[Callable[[Any], None]] = []
        # Each is given the Deferred of every call() (dashd.ops.metrics counts
        # them by outcome); an observer adds callbacks that pass the result on.
        self.call_observers: list[Callable[[Deferred[Any]], None]] = []
        # Each is told how every call() ended: (device, method, None or the
        # Failure) (dashd.app.alarms' call failure rates).
        self.call_result_observers: list[Callable[[Device, str, Any], None]] = []
        # Frames the device sessions dropped for being over their device's
        # rate limit (read by dashd.ops.metrics).
        self.frames_limited = 0

    def now(self) -> float:
        return self.clock.seconds()

    def publish(self, device: Device, name: str, data: Any) -> None:
        self._publish(Event(name, device.id, data, device.account_id, device.shared_with))

    def observe_events(self, observer: Callable[[Event], None],
                       names: Collection[str] = (),
                       accepts: Callable[[str], bool] | None = None) -> None:
        """Tell C{observer} of every published event whose name is one of
        C{names} or is accepted by C{accepts} (after L{event_observers}, in
        the order added): an event of another name does not call it."""
        wanted = frozenset(names)
        if accepts is None:
            test: Callable[[str], bool] = wanted.__contains__
        else:
            def test(name: str, accepts: Callable[[str], bool] = accepts) -> bool:
                return name in wanted or accepts(name)
        self._named.append((test, observer))
        self._by_name.clear()

    def _observers_of(self, name: str) -> tuple[Callable[[Event], None], ...]:
        observers = tuple(observer for test, observer in self._named if test(name))
        # Names are few (devices' method names among them: bounded, so
        # that a device making up names cannot grow this).
        if len(self._by_name) < MAX_EVENT_NAMES:
            self._by_name[name] = observers
        return observers

    def _publish(self, event: Event) -> None:
        self.hub.publish(event)
        for observer in self.event_observers:
            try:
                observer(event)
            except Exception:
                log.failure("event observer {observer}", observer=observer)
        named = self._by_name.get(event.name)
        if named is None:
            named = self._observers_of(event.name)
        for observer in named:
            try:
                observer(event)
            except Exception:
                log.failure("event observer {observer}", observer=observer)

    # update_shadow and record_info run for every report and heartbeat of
    # thousands of devices: plain callbacks, cheaper than inlineCallbacks.

    def update_shadow(
        self, device_id: str, update: shadow.ShadowUpdate, save_data: bool = False
    ) -> Deferred[Any]:
        """Fire with C{(device, UpdateResult)}. C{save_data}: the device
        itself reports, so values of keys in C{tags.save} are stored."""

        def changed(outcome: tuple[Device, shadow.UpdateResult]) -> Any:
            self.shadow_changed(*outcome)
            return outcome

        d = self.store.update_shadow(device_id, update, self.now(), save_data=save_data)
        return d.addCallback(changed)

    def record_info(self, device_id: str, info: dict[str, Any]) -> Deferred[Any]:
        """Keep what the device says of itself; its firmware identity also goes
        to the shadow's reported.ota (only when it changed). Fire with the
        device."""
        firmware = {k: info[k] for k in FIRMWARE_KEYS if k in info}
        update = None
        if firmware:
            # Derived from the info, not reported as such: no report times.
            update = shadow.ShadowUpdate(patches={"reported": {"ota": firmware}}, stamp=False)

        def recorded(outcome: tuple[Device, shadow.UpdateResult | None]) -> Device:
            device, result = outcome
            if result is not None:
                self.shadow_changed(device, result)
            for observer in self.info_observers:
                try:
                    observer(device, info)
                except Exception:
                    log.failure("info observer {observer}", observer=observer)
            return device

        return self.store.record_info(device_id, info, update, self.now()).addCallback(recorded)

    def connected(self, device: Device, pull: dict[str, Any] | None) -> None:
        """A device connected (and its record was read): tell the observers."""
        for observer in self.connect_observers:
            try:
                observer(device, pull)
            except Exception:
                log.failure("connect observer {observer}", observer=observer)

    def ready(self, session: Any) -> None:
        """A connection held here has given dashd its device's info (or
        asking for it failed): tell the observers."""
        for observer in self.ready_observers:
            try:
                observer(session)
            except Exception:
                log.failure("ready observer {observer}", observer=observer)

    def store_data(self, device: Device, data: Any) -> Deferred[Any]:
        """Keep what the device sent as data (C{Dash.Data}) as data points:
        an object's keys, each a point, or the whole value as the point
        C{data}. Fire once they are durable."""
        points = timeseries.data_points(data)
        d = self.store.append_points(device.id, device.account_id, points, self.now())

        def stored(count: int) -> int:
            self.publish(device, "data.stored", {
                "source": "data", "points": [{"key": k, "value": v} for k, v in points]})
            return count

        return d.addCallback(stored)

    def shadow_changed(self, device: Device, result: shadow.UpdateResult) -> None:
        """Tell subscribers, and the device if its desired state changed."""
        if not result.changed:
            return
        # The shadow's view (with its delta) is made only if a subscriber,
        # an observer or another node reads the event's data.
        self._publish(LazyEvent("shadow.update", device.id, partial(shadow.view, result.document),
                                device.account_id, device.shared_with))
        if result.desired_changed:
            self.router.desired_changed(device.id, result.document)

    # Calls to devices

    def call(self, device: Device, method: str, params: Any, timeout: float) -> Deferred[Any]:
        if not self.router.is_online(device.id):
            # Answer at once, and do not announce a call that never happens.
            d: Deferred[Any] = fail(Offline("device %s is offline" % device.id))
        else:
            # Announced by the node holding the device once it sent the call:
            # one refused at once (the device's connection closing, too many
            # calls in flight, too large) never reached the device.
            d = self.router.call(device.id, method, params, timeout, announce=True)
        for observer in self.call_observers:
            observer(d)
        if self.call_result_observers:
            d.addBoth(self._call_ended, device, method)
        return d

    def _call_ended(self, result: Any, device: Device, method: str) -> Any:
        failure = result if isinstance(result, Failure) else None
        for observer in self.call_result_observers:
            try:
                observer(device, method, failure)
            except Exception:
                log.failure("call result observer {observer}", observer=observer)
        return result
