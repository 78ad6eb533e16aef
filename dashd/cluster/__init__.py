"""
Cluster mode: several dashd nodes behind a TCP load balancer, sharing a
PostgreSQL store (L{dashd.store.postgres}) and one Redis, through which they
tell each other what they must know. It is on when ``cluster.redis_url`` is
set; L{Cluster} then provides the router and the hub in place of
L{dashd.channel.router.LocalRouter} and L{dashd.channel.hub.LocalHub}.

Every node subscribes to two channels (``P`` is ``cluster.namespace``):
``P:all``, which every node hears, and ``P:to:NODE``, its own. Messages are
JSON objects; ``t`` says what it is and ``o`` which node sent it.

On ``P:all``:

==========  ==================================  ================================
``t``       fields                              what the nodes do
==========  ==================================  ================================
``hb``      (none)                              the sender lives (a few times
                                                per ``cluster.node_timeout``)
``bye``     (none)                              the sender stopped: its calls
                                                fail, its devices are offline
``at``      ``id``, ``n``, ``c``, ``s``         device ``id`` is now held by
                                                connection ``c`` of node ``n``
                                                (change number ``s``); a node
                                                holding an older connection of
                                                it closes that one (code 4000)
``dt``      ``id``, ``n``, ``c``, ``s``         that connection let go of it
``ev``      ``n``, ``id``, ``d``, ``a``, ``s``  a notification (name, device,
                                                data, account, shared with),
                                                delivered to the subscribers of
                                                every node whose key may see it
``ds``      ``id``, ``doc``                     the device's desired state
                                                changed: the node holding it
                                                sends ``Shadow.Delta``
``dc``      ``device``                          the device record changed
``dx``      ``id``, ``code``, ``reason``        close the device's connection
                                                (deleted, token rotated)
``rv``      ``key``                             API key revoked: forget it,
                                                close its streams
``cq``      ``id``                              calls were queued for the
                                                device: every node notes it,
                                                the one holding the device
                                                takes them from the store
                                                (L{dashd.app.calls})
``in``      ``v``                               the sender's interest: ``"*"``
                                                or the accounts of its
                                                subscribers; ``ev`` goes only
                                                to nodes that want it, on
                                                their own channels
                                                (L{dashd.cluster.interest})
``ap``      ``k``, ``d``                        news of another part (kind,
                                                data), e.g. ``alarms``: alarm
                                                rules or webhooks changed
                                                (L{dashd.ops.alarms})
==========  ==================================  ================================

On ``P:to:NODE``: ``call`` (``r`` the call's ID, ``id``, ``m`` method, ``p``
params, ``to`` timeout, ``a`` 1 when NODE tells subscribers once it sent it),
a REST call for a device NODE holds; ``res``
(``r``, and ``v`` the result or ``e`` the error as
L{dashd.domain.errors.to_wire} writes it: ``{"kind", "message", ...}``,
``kind`` naming the kind of domain error, e.g. ``DeviceFailed`` with the
device's own ``code``, ``TimedOut``, ``Busy``), its answer. A call whose request
no node receives (PUBLISH counts none) fails at once as offline, one whose
node dies fails when the node is found dead, and every call has a timer of
its timeout plus L{dashd.cluster.node.CALL_GRACE}. ``rec`` (``r``, ``id``):
the record of device ``id`` as NODE's connection holds it (asked while the
database is away, by a node that never read it), answered by ``res`` with
``v`` the record.

``at`` and ``dt`` are published by the presence scripts, see
L{dashd.cluster.presence}, with the keys they keep.
"""

from dashd.cluster.node import Cluster

__all__ = ["Cluster"]
