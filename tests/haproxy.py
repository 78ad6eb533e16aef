"""
HAProxy (Debian's package; ``make tools`` installs it) running
``etc/haproxy.cfg`` as shipped, in front of a test cluster: only the
addresses change (its port, the nodes' ports and agent ports), ``maxconn``
fits this machine's open files limit, and a stats socket is added, from
which the test reads what HAProxy makes of each node.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from backends import free_port

SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "etc", "haproxy.cfg")


class HAProxy:
    def __init__(self, directory: str, nodes: list[tuple[int, int]]) -> None:
        """C{nodes}: (port, agent port) of each node, in order."""
        if shutil.which("haproxy") is None:
            raise RuntimeError("these tests need haproxy (make tools installs it)")
        self.port = free_port()
        # A socket's path is short (108 bytes): not in the test's directory.
        self._socket_dir = tempfile.mkdtemp(prefix="hap")
        self.stats = os.path.join(self._socket_dir, "stats.sock")
        self.path = os.path.join(directory, "haproxy.cfg")
        with open(SHIPPED) as f:
            shipped = f.read().splitlines()
        template = next(line for line in shipped if line.strip().startswith("server node1 "))
        out = []
        for line in shipped:
            stripped = line.strip()
            if stripped.startswith("server "):
                continue
            if stripped == "bind :8080":
                line = "    bind 127.0.0.1:%d" % self.port
            elif stripped.startswith("maxconn "):
                line = "    maxconn 4000"
            out.append(line)
            if stripped == "global":
                out.append("    stats socket %s mode 600 level admin" % self.stats)
        for i, (port, agent) in enumerate(nodes):
            out.append(template.replace("node1", "node%d" % (i + 1))
                       .replace("10.0.0.11:8080", "127.0.0.1:%d" % port)
                       .replace("8089", str(agent)))
        with open(self.path, "w") as f:
            f.write("\n".join(out) + "\n")
        self.log_path = os.path.join(directory, "haproxy.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", self.path], stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        # Started once it listens and its stats socket is there (HAProxy
        # makes the socket a moment after it binds the port; a test asking
        # it too soon got "no such file").
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            with socket.socket() as s:
                listening = s.connect_ex(("127.0.0.1", self.port)) == 0
            if listening and os.path.exists(self.stats):
                return
            time.sleep(0.05)
        raise RuntimeError("haproxy did not start: %s" % open(self.log_path).read())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
            self.proc = None
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    def command(self, line: str) -> str:
        """A command on the stats socket (level admin), e.g. ``set server
        dashd_nodes/node1 state drain``; its answer."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.stats)
            s.sendall(line.encode() + b"\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data.decode()

    def servers(self) -> dict[str, tuple[str, int]]:
        """Each node's (status, weight) as HAProxy sees it: status UP, DOWN,
        DRAIN, ...; weight after the agent's percentage."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        status, weight = header.index("status"), header.index("weight")
        found = {}
        for line in lines[1:]:
            fields = line.split(",")
            if len(fields) > weight and fields[0] == "dashd_nodes" and \
                    fields[1].startswith("node"):
                found[fields[1]] = (fields[status], int(fields[weight] or 0))
        return found
