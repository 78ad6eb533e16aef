"""
``twistd dashd``: command-line options and the service they make.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from twisted.python import usage

from dashd import config as configuration
from dashd.assembly import build
from dashd.ops.services import DashdService


class Options(usage.Options):
    synopsis = "[--listen ENDPOINT]... [--data-dir DIR] [--config FILE] [--print-config]"
    longdesc = (
        "Run dashd, the device management dashboard: REST API, device and "
        "notification WebSockets on the same port(s). Command-line options "
        "override the configuration file."
    )
    optFlags = [
        ["print-config", None, "Print the effective configuration (TOML) and exit"],
    ]
    optParameters = [
        ["config", "c", None, "TOML configuration file (see etc/dashd.toml)"],
        ["data-dir", "d", None, "Directory for the store and the first admin key "
                                "[default: ./dashd-data]"],
        ["ping-interval", None, None, "Seconds between WebSocket pings to devices (0: off)",
         float],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Endpoint to serve on, e.g. tcp:8080 (repeatable) [default: tcp:8080]"""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        overrides: dict[str, Any] = {}
        if self["listen"]:
            overrides["listen"] = list(self["listen"])
        if self["data-dir"] is not None:
            overrides["data_dir"] = self["data-dir"]
        if self["ping-interval"] is not None:
            overrides["device.ping_interval"] = self["ping-interval"]
        try:
            self["effective"] = configuration.load(self["config"], overrides)
        except configuration.ConfigError as e:
            # One line naming the option, without twistd's usage text.
            fail(str(e))
        if self["print-config"]:
            sys.stdout.write(configuration.dump(self["effective"], self["config"]))
            sys.stdout.flush()
            raise SystemExit(0)


def fail(message: str) -> None:
    """Stop before anything started, with one line on stderr."""
    sys.stderr.write("dashd: cannot start: %s\n" % message)
    sys.stderr.flush()
    raise SystemExit(1)


# CPython collects young objects every 700 allocations and, as the heap
# grows, the whole heap every hundred such collections. With tens of
# thousands of long-lived connection objects that is a full pass over all of
# them every few dozen connections during a connect storm. Collecting less
# often costs some memory (garbage cycles wait longer) and saves a third of
# the CPU a connecting device costs (docs/performance.md).
GC_THRESHOLDS = (10000, 10, 10)


def makeService(options: Options, reactor: Any = None) -> DashdService:
    gc.set_threshold(*GC_THRESHOLDS)
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    try:
        return build(options["effective"], reactor)
    except configuration.ConfigError as e:
        fail(str(e))
        raise
