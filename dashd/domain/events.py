"""
Notifications: what happened to a device, as ``{"name", "id", "data"}``
objects for the subscribers of ``/api/v2/notify`` (L{dashd.channel.hub})
and the stored history (L{dashd.app.history}).

Event names:

- ``online`` / ``offline``: a device connected / disconnected
  (``data.reason`` says why it went offline);
- ``rpc.in.METHOD``: a call dashd made to the device (``data`` = params; a call
  refused before it was sent, e.g. 429 or 503, is not announced);
- ``rpc.out.METHOD``: something the device sent: its notifications under
  their own method name, ``rpc.out.Log`` for ``Dash.Log`` lines and
  ``rpc.out.Heartbeat`` for ``Dash.Heartbeat`` (``data`` = params);
- ``shadow.update``: the shadow changed (``data`` = the whole shadow, with
  its delta);
- ``ota.status``, ``ota.progress``: a firmware update (L{dashd.app.firmware}).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from dashd.jsontext import compact


@dataclass(frozen=True)
class Event:
    name: str
    device_id: str
    data: Any
    # Who may see it: the owning account and those the device is shared with.
    account_id: str
    shared_with: tuple[str, ...] = ()

    @cached_property
    def payload(self) -> str:
        """The event as JSON, encoded on first use (most events have no
        subscriber to see them)."""
        return compact({"name": self.name, "id": self.device_id, "data": self.data})
