"""
The cluster's Prometheus metrics, on each node's ``/metrics`` (registered
by L{dashd.assembly} in cluster mode). Per node unless named
``dashd_cluster_*``, which every node reports alike (do not sum those):

| metric | type | what |
|---|---|---|
| ``dashd_cluster_redis_connected`` | gauge | 1 while this node is subscribed to Redis, else 0 |
| ``dashd_cluster_redis_losses_total`` | counter | times this node lost its Redis subscription |
| ``dashd_cluster_nodes_alive`` | gauge | nodes this node heard from within ``cluster.node_timeout``, itself included |
| ``dashd_cluster_devices_online`` | gauge | devices connected to any node, as this node knows them |
| ``dashd_cluster_calls_sent_total`` | counter | calls this node passed to the node holding the device |
| ``dashd_cluster_calls_in_flight`` | gauge | such calls waiting for their answer |
| ``dashd_cluster_calls_served_total`` | counter | calls other nodes passed to this node for its devices |
| ``dashd_cluster_calls_serving`` | gauge | such calls waiting for the device's answer |

``dashd_devices_connected`` (L{dashd.ops.metrics}) is this node's own
devices: summed over the nodes it is the fleet.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


class ClusterCollector:
    """Reads the figures from the node (L{dashd.cluster.node.Cluster}) when
    scraped."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        c = self.cluster
        yield GaugeMetricFamily(
            "dashd_cluster_redis_connected", "1 while this node is subscribed to Redis",
            value=1 if c.bus.connected else 0)
        yield CounterMetricFamily(
            "dashd_cluster_redis_losses", "Times this node lost its Redis subscription",
            value=c.redis_losses)
        yield GaugeMetricFamily(
            "dashd_cluster_nodes_alive",
            "Nodes heard from within cluster.node_timeout, this one included",
            value=c.nodes_alive())
        yield GaugeMetricFamily(
            "dashd_cluster_devices_online",
            "Devices connected to any node of the cluster (the same on every node)",
            value=c.online_count())
        yield CounterMetricFamily(
            "dashd_cluster_calls_sent", "Calls passed to the node holding the device",
            value=c.calls_sent)
        yield GaugeMetricFamily(
            "dashd_cluster_calls_in_flight", "Calls passed to other nodes, not answered yet",
            value=c.remote_calls_in_flight())
        yield CounterMetricFamily(
            "dashd_cluster_calls_served", "Calls other nodes passed here for devices held here",
            value=c.calls_served)
        yield GaugeMetricFamily(
            "dashd_cluster_calls_serving",
            "Calls from other nodes waiting for the answer of a device held here",
            value=c.serving)
