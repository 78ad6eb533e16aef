"""
The application as its callers see it: one object holding every use case,
built in one place from the store, the router and hub, the clock and the
configuration. The REST API, the control socket and dashctl (on a stopped
dashd's store) all call the same one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from dashd.app.accounts import Accounts
from dashd.app.alarms import Alarms
from dashd.app.auth import Authenticator
from dashd.app.calls import Calls
from dashd.app.devices import Devices
from dashd.app.firmware import Firmware, OtaManager
from dashd.app.fleet import Fleet
from dashd.app.jobs import Jobs
from dashd.app.keys import Keys
from dashd.app.library import FirmwareLibrary
from dashd.app.records import Records
from dashd.app.tickets import ITicketStore, NotifyTickets
from dashd.app.webhooks import Webhooks
from dashd.store.alarms_sql import AlarmStore


@dataclass(frozen=True)
class Application:
    clock: IReactorTime
    fleet: Fleet
    auth: Authenticator
    accounts: Accounts
    keys: Keys
    devices: Devices
    records: Records
    calls: Calls
    # None where nothing is sent to devices (dashctl on a stopped dashd).
    firmware: Firmware | None = None
    # None where there is no notification stream (dashctl).
    tickets: NotifyTickets | None = None
    # The firmware library and fleet jobs (None where nothing is sent to
    # devices).
    library: Any = None
    jobs: Any = None
    # Alarm rules and alarms, webhooks (dashd.app.alarms, dashd.app.webhooks).
    alarms: Any = None
    webhooks: Any = None

    def ping(self) -> Deferred[Any]:
        """Fire once the store has answered a trivial query."""
        return self.fleet.store.ping()


def build_application(fleet: Fleet, auth: Authenticator, ota: OtaManager | None = None,
                      tickets: ITicketStore | None = None, alarm_engine: Any = None,
                      webhook_dispatcher: Any = None) -> Application:
    """The use cases over C{fleet}; C{ota}: the firmware updates' manager
    (None where nothing is sent to devices); C{tickets}: where notification
    tickets are kept (None where there is no notification stream)."""
    store, clock = fleet.store, fleet.clock
    accounts = Accounts(store, clock)
    devices = Devices(fleet, accounts)
    firmware = Firmware(ota, devices) if ota is not None else None
    library = FirmwareLibrary(ota, firmware) if ota is not None and firmware else None
    return Application(
        clock=clock,
        fleet=fleet,
        auth=auth,
        accounts=accounts,
        keys=Keys(store, accounts, auth, fleet.hub, clock),
        devices=devices,
        records=Records(store, devices),
        calls=Calls(fleet, devices),
        firmware=firmware,
        tickets=NotifyTickets(tickets, auth, clock) if tickets is not None else None,
        library=library,
        jobs=Jobs(fleet, devices, library) if ota is not None else None,
        alarms=Alarms(fleet, devices, alarm_engine, AlarmStore(store),
                      fleet.config["alarms.max_rules_per_account"]),
        webhooks=Webhooks(AlarmStore(store), webhook_dispatcher, clock, fleet.config),
    )
