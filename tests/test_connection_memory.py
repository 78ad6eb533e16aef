"""
What an open, idle device connection keeps (docs/performance.md, memory per
idle device): Autobahn's per-connection state is compacted once the
session is open (L{dashd.channel.websocket.compact}), and the connection
still does everything a connection does afterwards.

dashd runs in the test's own process so that its protocol objects can be
looked at.
"""

from __future__ import annotations

import gc
import sys

import pytest
import pytest_twisted

import backends

from dashd.channel.websocket import _NO_SEND_QUEUE, DeviceProtocol, _TimerCall, unread_bytes
from support import Client, connect_device, device_online, eventually
from test_garbage import InProcessDashd


def _device_protocols() -> list[DeviceProtocol]:
    return [o for o in gc.get_objects() if isinstance(o, DeviceProtocol) and o.session is not None]


@pytest.mark.parametrize("store", backends.STORES)
@pytest_twisted.ensureDeferred
async def test_an_open_device_connection_keeps_little_and_still_works(tmp_path, store):
    # No keep-alive pings but the test's own (a ping in flight is state).
    # Each store parses the device record its own way (what is kept of it
    # is shared whichever it is).
    store_url = backends.create_database() if store == "postgresql" else None
    server = InProcessDashd(str(tmp_path), {"gc": {"full_collection_interval": 0},
                                            "device": {"ping_interval": 3600}},
                            store_url=store_url)
    await server.start_here()
    try:
        admin = Client(server, server.admin_key)
        devices = []
        ids = []
        for _ in range(2):
            device_id, token = await admin.register()
            devices.append(await connect_device(server, token))
            await device_online(admin, device_id)
            ids.append(device_id)
        protos = _device_protocols()
        assert len(protos) == 2
        for proto in protos:
            # Autobahn leaves 73 attributes (a 3.3 KB dictionary) on an
            # open connection; compacted, what differs from an idle
            # connection's is left, and what reading messages puts back.
            assert len(proto.__dict__) <= 42, " ".join(sorted(proto.__dict__))
            assert sys.getsizeof(proto.__dict__) <= 900
            assert proto.send_queue is _NO_SEND_QUEUE
            assert proto.utf8validator is None
        # One set of traffic counters for all device connections.
        assert protos[0].trafficStats is protos[1].trafficStats
        before = protos[0].trafficStats.incomingWebSocketMessages

        # Calls both ways, and a clean close, after the compaction.
        for device_id in ids:
            reply = await admin.get("/api/v2/devices/%s/rpc/Sys.GetInfo" % device_id)
            assert reply.status == 200, reply
        reply = await admin.post("/api/v2/devices/%s/rpc/Sim.Echo" % ids[0], {"n": 1})
        assert (reply.status, reply.body) == (200, {"n": 1})
        assert protos[0].trafficStats.incomingWebSocketMessages >= before + 3
        # What the device sent and dashd has not read yet (the info
        # request waits for it: dashd.channel.session).
        assert [unread_bytes(p.transport) for p in protos] == [0, 0]
        for proto in protos:
            proto.transport.pauseProducing()
        for device in devices:
            device.notify("Bench.Tick", {"n": 1})
        await eventually(lambda: all(unread_bytes(p.transport) > 0 for p in protos))
        assert all(p._unread() for p in protos)
        for proto in protos:
            proto.transport.resumeProducing()
        await eventually(lambda: not any(p._unread() for p in protos))

        # A keep-alive ping, answered: the frames read since are forgotten.
        for proto in protos:
            proto._sendAutoPing()
        await eventually(lambda: all(not p.autoPingPending for p in protos))
        for proto in protos:
            assert len(proto.__dict__) <= 42, " ".join(sorted(proto.__dict__))
            # What reading frames and answering pings sets is in slots
            # (DeviceProtocol.__slots__): the dictionary stays the size
            # compact() left (a 32-entry table, not 64), and no frame's
            # unmasker is kept once its frame has been read.
            assert sys.getsizeof(proto.__dict__) <= 500, " ".join(sorted(proto.__dict__))
            assert proto.current_frame_masker is None
            # The next ping: one slotted call of the protocol's own method,
            # not txaio's call wrapping a closure of its arguments.
            ping = proto.autoPingPendingCall
            assert type(ping) is _TimerCall and not hasattr(ping, "__dict__")
            assert ping._call == proto._sendAutoPing

        # What each device said of itself and its shadow, kept while it is
        # connected (the session's device record): the same keys and short
        # values are one object for all devices (jsontext.shared).
        def same_objects(a, b, path="") -> int:
            assert a == b or type(a) is type(b), path
            if isinstance(a, dict):
                n = 0
                for key in a.keys() & b.keys():
                    other = next(k for k in b if k == key)
                    assert other is key, path + "/" + key
                    n += 1 + same_objects(a[key], b[key], path + "/" + key)
                return n
            if isinstance(a, str) and a == b:
                assert a is b, path
                return 1
            return 0

        records = [p.session.device for p in protos]
        assert same_objects(records[0].info, records[1].info) >= 10
        assert records[0].shadow["state"]["reported"]["ota"]["fw_version"]
        assert same_objects(records[0].shadow, records[1].shadow) >= 15
        assert not _NO_SEND_QUEUE
        for device in devices:
            device.stop()
        for device_id in ids:
            await device_online(admin, device_id, online=False)
        await eventually(lambda: not _device_protocols())
    finally:
        await server.stop_here()
