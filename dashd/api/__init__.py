"""
The HTTP face of dashd: the REST API under ``/api/v2``, the two WebSocket
doors and the web dashboard at ``/``, as one Klein app. Each area is a mixin
class in its own module whose routes register on the shared app
(L{dashd.api.base.app});
L{Api} is all of them together, holding the dependencies the routes use
(no module globals).
"""

from __future__ import annotations

from typing import Any

from dashd.api.accounts import AccountRoutes
from dashd.api.alarms import AlarmRoutes
from dashd.api.calls import CallRoutes
from dashd.api.channels import ChannelRoutes
from dashd.api.data import DataRoutes
from dashd.api.devices import DeviceRoutes
from dashd.api.door import Door
from dashd.api.jobs import JobRoutes
from dashd.api.keys import KeyRoutes
from dashd.api.library import LibraryRoutes
from dashd.api.ops import OpsRoutes
from dashd.api.ota import OtaRoutes
from dashd.api.rpc import RpcRoutes
from dashd.api.session import SessionRoutes
from dashd.api.ui import UiRoutes

__all__ = ["Api"]


class Api(
    ChannelRoutes, DeviceRoutes, RpcRoutes, KeyRoutes, AccountRoutes, OpsRoutes, OtaRoutes,
    DataRoutes, CallRoutes, UiRoutes, SessionRoutes, LibraryRoutes, JobRoutes, AlarmRoutes,
):
    def resource(self) -> Any:
        # The busiest requests are answered before Klein (dashd.api.door).
        return Door(self, super().resource())
