"""Lean devices for bench/heap_per_device.py: host, port, a file of tokens."""
import sys
from twisted.internet import reactor, protocol
from bench.lean import LeanDevice, ws_handshake
host, port = sys.argv[1], int(sys.argv[2])
tokens = [l.strip() for l in open(sys.argv[3]) if l.strip()]
class Owner:
    acked = 0
    def device_opened(self, p): pass
    def device_refused(self, p, s): print("refused", s, flush=True)
    def device_lost(self, p, was_open): print("lost", flush=True)
    def device_info_acked(self, p, ok):
        self.acked += 1
        if self.acked == len(tokens): print("ok", self.acked, flush=True)
owner = Owner()
class F(protocol.ClientFactory):
    def __init__(self, p): self.p = p
    def buildProtocol(self, a): return self.p
def go(i=0):
    for j in range(i, min(i + 50, len(tokens))):
        p = LeanDevice(j, tokens[j], owner)
        p.handshake = ws_handshake("%s:%d" % (host, port), "/api/v2/rpc", tokens[j], "dash.mongoose-os.com")
        reactor.connectTCP(host, port, F(p))
    if i + 50 < len(tokens): reactor.callLater(0.05, go, i + 50)
reactor.callWhenRunning(go)
reactor.run()
