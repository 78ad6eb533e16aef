"""Every implementation of a pluggable interface provides all of it."""

from __future__ import annotations

from zope.interface.verify import verifyClass, verifyObject

from dashd.cluster.node import ClusterHub, ClusterRouter
from dashd.channel.hub import IHub, LocalHub
from dashd.channel.router import IRouter, LocalRouter
from dashd.store import IStore
from dashd.store.postgres import PostgresStore
from dashd.store.sqlite import InlineSQLiteStore, SQLiteStore


def test_routers_and_hubs():
    for cls in (LocalRouter, ClusterRouter):
        assert verifyClass(IRouter, cls)
    for cls in (LocalHub, ClusterHub):
        assert verifyClass(IHub, cls)


def test_stores():
    for cls in (SQLiteStore, InlineSQLiteStore, PostgresStore):
        assert verifyClass(IStore, cls)


def test_the_inline_store_of_the_unit_tests(tmp_path):
    store = InlineSQLiteStore(str(tmp_path / "s.sqlite3"))
    store.start()
    try:
        assert verifyObject(IStore, store)
    finally:
        store.stop()


def test_ticket_stores():
    from dashd.app.tickets import ITicketStore, LocalTickets
    from dashd.cluster.tickets import RedisTickets

    for cls in (LocalTickets, RedisTickets):
        assert verifyClass(ITicketStore, cls)
