"""
Clusters of real dashd processes for the tests: N nodes sharing a
PostgreSQL database of their own and a Redis namespace of their own (on
the machine's servers, or on private ones a fault test stops and starts).
"""

from __future__ import annotations

import os
from typing import Any

import backends
from support import DashdProcess, merge

# Nodes notice a dead node within this many seconds.
NODE_TIMEOUT = 2.0


class TestCluster:
    __test__ = False  # not a test class

    def __init__(
        self,
        directory: str,
        nodes: int = 2,
        redis_url: str = backends.REDIS_URL,
        store_url: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        backends.check_redis(redis_url)
        self.redis_url = redis_url
        self.namespace = backends.redis_namespace()
        self._own_database = store_url is None
        self.store_url = store_url or backends.create_database()
        cluster = {"cluster": {"redis_url": redis_url, "namespace": self.namespace,
                               "node_timeout": NODE_TIMEOUT}}
        self.nodes = []
        for i in range(nodes):
            path = os.path.join(directory, "node%d" % i)
            os.makedirs(path, exist_ok=True)
            self.nodes.append(DashdProcess(path, merge(cluster, config or {}),
                                           store_url=self.store_url, first=(i == 0)))

    def start(self) -> None:
        # The first node creates the admin key; the others find it there.
        self.nodes[0].start()
        for node in self.nodes[1:]:
            node.start()

    @property
    def admin_key(self) -> str:
        return self.nodes[0].admin_key

    def stop(self) -> list[str]:
        """Stop every node; what their logs show that they should not."""
        problems = []
        for i, node in enumerate(self.nodes):
            if node.proc is not None:
                node.stop()
            problems.extend("node%d: %s" % (i, p) for p in node.problems())
        if self._own_database:
            backends.drop_database(self.store_url)
        try:
            backends.clear_redis_namespace(self.namespace, self.redis_url)
        except Exception:
            pass  # a private Redis may be gone already
        return problems

    def logs(self) -> str:
        return "\n".join("--- node%d ---\n%s" % (i, n.log()[-6000:])
                         for i, n in enumerate(self.nodes))
