"""
Instructions dashd executes per device connection (issue 21 item 4),
counted by valgrind's callgrind: the same figure whatever else the machine
is doing, so two versions can be compared on a busy, shared machine.

    .venv/bin/python -m bench.connect_instructions [--devices 300] [--batch 25]

Starts dashd under ``valgrind --tool=callgrind`` with counting off
(keep-alive pings every 30 s, as by default), registers ``--devices``
devices, then counts the instructions of dashd's process (all threads)
while lean devices (L{bench.lean}, in this process, not counted) connect
``--batch`` at a time, each sending its heartbeat with its info and
waiting for the answer, and for a second after the last: the handshake,
the session, the store jobs of a connect. Prints the count per device.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from twisted.internet import defer, protocol, task

from bench.instructions import callgrind_total, control, free_port, post, start, stopped_after
from bench.lean import LeanDevice, ws_handshake


class _Owner:
    def __init__(self) -> None:
        self.acked = 0
        self.waiting: defer.Deferred[None] | None = None
        self.want = 0

    def device_opened(self, proto: LeanDevice) -> None:
        pass

    def device_refused(self, proto: LeanDevice, status: int) -> None:
        raise AssertionError("refused: %s" % status)

    def device_lost(self, proto: LeanDevice, was_open: bool) -> None:
        pass

    def device_info_acked(self, proto: LeanDevice, ok: bool) -> None:
        assert ok
        self.acked += 1
        if self.acked >= self.want and self.waiting is not None:
            d, self.waiting = self.waiting, None
            d.callback(None)


def count(n: int, batch: int) -> int:
    work = tempfile.mkdtemp(prefix="dashd-connect-instructions-")
    port = free_port()
    # Keep-alive pings every 30 s, as by default: a connect schedules its pings.
    server, key, _, _ = start("dashd", work, port, ping_interval=30)
    base = "http://127.0.0.1:%d" % port
    tokens = [post(base + "/api/v2/devices", key, {})["token"] for _ in range(n + batch)]
    with stopped_after(server):
        async def run(reactor):
            owner = _Owner()
            protos = []

            class Factory(protocol.ClientFactory):
                def __init__(self, proto):
                    self.proto = proto

                def buildProtocol(self, addr):
                    return self.proto

            async def connect(some):
                owner.want += len(some)
                owner.waiting = defer.Deferred()
                for token in some:
                    proto = LeanDevice(len(protos), token, owner)
                    proto.handshake = ws_handshake("127.0.0.1:%d" % port, "/api/v2/rpc", token,
                                                   "dash.mongoose-os.com")
                    protos.append(proto)
                    reactor.connectTCP("127.0.0.1", port, Factory(proto))
                await owner.waiting

            # A first batch, not counted: what is made on first use.
            await connect(tokens[:batch])
            await task.deferLater(reactor, 2, lambda: None)
            control(server.pid, "--instr=on")
            for i in range(batch, n + batch, batch):
                await connect(tokens[i:i + batch])
            await task.deferLater(reactor, 1, lambda: None)
            control(server.pid, "--instr=off")
            control(server.pid, "--dump")
            for proto in protos:
                proto.close()

        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    return callgrind_total(work) // n


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.connect_instructions")
    p.add_argument("--devices", type=int, default=300)
    p.add_argument("--batch", type=int, default=25)
    args = p.parse_args()
    print("dashd %12d instructions a device connection (%d devices, %d at a time)"
          % (count(args.devices, args.batch), args.devices, args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
