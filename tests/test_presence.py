"""The presence replica each node keeps (no Redis here: its logic alone)."""

from __future__ import annotations

from twisted.internet.task import Clock

from dashd.cluster.presence import Holder, Presence, parse_holder


def replica() -> tuple[Presence, Clock]:
    clock = Clock()
    p = Presence("nme", clock, node_timeout=2.0)
    p.load({}, 0, set())
    return p, clock


def test_attach_detach_and_node_liveness():
    p, clock = replica()
    p.heard_from("na")
    p.apply("at", "d1", "na", "na.1", 1)
    assert p.holder("d1") == Holder("na", "na.1", 1)
    # A detach of an older connection leaves the newer one.
    p.apply("at", "d1", "nb", "nb.1", 2)
    p.apply("dt", "d1", "na", "na.1", 3)
    assert p.holders["d1"].conn == "nb.1"
    assert p.holder("d1") is None  # nb was never heard from: not alive
    p.heard_from("nb")
    assert p.holder("d1").node == "nb"
    clock.advance(2.5)
    assert p.holder("d1") is None and p.silent_nodes() == ["na", "nb"]
    assert p.silent_nodes() == []
    assert p.alive("nme")  # this node is always alive to itself


def test_snapshot_then_only_newer_messages():
    clock = Clock()
    p = Presence("nme", clock, 2.0)
    # Messages held while the snapshot is read...
    p.apply("at", "d1", "na", "na.1", 4)   # already in the snapshot
    p.apply("at", "d2", "na", "na.2", 6)   # newer
    p.apply("dt", "d3", "na", "na.3", 7)   # newer: d3 went away
    changes = p.load({"d1": Holder("na", "na.1", 4), "d3": Holder("na", "na.3", 5)}, 5, {"na"})
    assert changes == [("d2", Holder("na", "na.2", 6))]
    assert set(p.holders) == {"d1", "d2"}
    assert p.online_devices() == {"d1", "d2"}
    assert parse_holder(b'{"n":"na","c":"na.9","t":1.5,"s":9}') == Holder("na", "na.9", 9)
