"""
A TCP proxy a test can cut: between a dashd and its Redis or PostgreSQL, to
take one node's link away (a partition, a blip) without stopping the shared
server. Threads of its own, so it relays whether or not the test's reactor
turns (a node may connect while the test waits for it to start).
"""

from __future__ import annotations

import socket
import threading


class Cutter:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.is_cut = False
        self._closed = False
        # Cleared while the link is held (see hold).
        self._flowing = threading.Event()
        self._flowing.set()
        threading.Thread(target=self._accept, daemon=True, name="cutter").start()

    def url(self, scheme_and_rest: str) -> str:
        """C{scheme_and_rest} with C{{port}} replaced by the proxy's port."""
        return scheme_and_rest.replace("{port}", str(self.port))

    def cut(self) -> None:
        """Close every connection and refuse new ones (they are closed at once)."""
        with self._lock:
            self.is_cut = True
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            _close(s)

    def restore(self) -> None:
        with self._lock:
            self.is_cut = False

    def hold(self) -> None:
        """Relay nothing more, either way, until L{release}: the bytes wait
        (a slow link), the connections stay open."""
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        self.cut()
        _close(self._listener)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refused = self.is_cut
            if refused:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(sink)
        with self._lock:
            self._sockets.discard(source)
            self._sockets.discard(sink)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
