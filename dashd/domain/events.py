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
from typing import Any, Callable

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


class LazyEvent(Event):
    """
    An L{Event} whose data is made on first use, by C{make()}: a
    C{shadow.update}'s data is the whole shadow with its delta, and most
    reports have no subscriber, observer or other node that reads it.
    C{make} must give the same data whenever it is called (it reads
    documents nothing changes in place).
    """

    def __init__(self, name: str, device_id: str, make: Callable[[], Any], account_id: str,
                 shared_with: tuple[str, ...] = ()) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "device_id", device_id)
        object.__setattr__(self, "_make", make)
        object.__setattr__(self, "account_id", account_id)
        object.__setattr__(self, "shared_with", shared_with)

    @cached_property
    def data(self) -> Any:  # type: ignore[override]
        return self._make()  # type: ignore[attr-defined]

    def __eq__(self, other: object) -> bool:
        # Equal to the plain event it stands for, as to another lazy one.
        if not isinstance(other, Event):
            return NotImplemented
        return ((self.name, self.device_id, self.data, self.account_id, self.shared_with)
                == (other.name, other.device_id, other.data, other.account_id,
                    other.shared_with))

    __hash__ = Event.__hash__
