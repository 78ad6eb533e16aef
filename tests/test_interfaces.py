"""Every implementation of a pluggable interface provides all of it."""

from __future__ import annotations

from zope.interface.verify import verifyClass

from dashd.cluster.node import ClusterHub, ClusterRouter
from dashd.channel.hub import IHub, LocalHub
from dashd.channel.router import IRouter, LocalRouter


def test_routers_and_hubs():
    for cls in (LocalRouter, ClusterRouter):
        assert verifyClass(IRouter, cls)
    for cls in (LocalHub, ClusterHub):
        assert verifyClass(IHub, cls)


def test_ticket_stores():
    from dashd.app.tickets import ITicketStore, LocalTickets
    from dashd.cluster.tickets import RedisTickets

    for cls in (LocalTickets, RedisTickets):
        assert verifyClass(ITicketStore, cls)
