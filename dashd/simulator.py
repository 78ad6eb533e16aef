"""
Simulated devices: Mongoose OS (``dash`` library) or mDash-library firmware
in software, as many as you like in one process.

    python -m dashd.simulator --url ws://127.0.0.1:8080/api/v2/rpc --token TOKEN

A simulated device connects like the real firmware does (token in an
``Authorization: Bearer`` header, ``dash.mongoose-os.com`` subprotocol),
then:

- ``mos`` dialect (default): sends ``Dash.Heartbeat`` with its system info
  as soon as it connects, puts ``src``/``dst``/``key`` on every frame,
  answers unknown methods with error 404 like Mongoose OS, applies
  ``Shadow.Delta`` and reports the new state back with
  ``Dash.Shadow.Update``;
- ``mdash`` dialect: like the mDash device library: no heartbeat (dashd has
  to ask ``Sys.GetInfo``), no ``Shadow.Delta`` handler, error -32601 for
  unknown methods, state reported with ``State.Set``; a file system in
  memory with the library's ``FS.List``, ``FS.Get {filename, offset, len}``
  (``{filename, offset, left, data: BASE64}``), ``FS.Put``, ``FS.Rename``
  and ``FS.Remove``, and L{SimulatedDevice.store} (``mDashStore``): a line
  ``TOPIC JSON`` appended to ``mdash.unsent`` (renamed to
  ``mdash.unsent.old`` past 32 KB), then the notification ``DB.NewData``
  (``--store-every SECONDS`` stores a reading that often).

Methods it serves: ``Sys.GetInfo``, ``RPC.List``, ``GPIO.Toggle {"pin"}``,
``GPIO.Read {"pin"}``, ``Sim.Echo`` (returns its params), ``Sim.Sleep
{"seconds"}`` (answers late), ``Sim.Fail {"code", "message"}`` (answers with
that error), ``Sys.Reboot`` (drops the connection and comes back), and
``Shadow.Delta`` (mos only). It reconnects when the connection drops.

Firmware updates, like the device libraries:

- ``OTA.Begin {"size"}``, ``OTA.Write {"data": BASE64}`` (answers
  ``{"queued": N}``), ``OTA.End``; the mdash dialect reports progress with
  ``State.Set {"ota": {"percent": N}}`` notifications, like the mDash
  library;
- ``OTA.Update {"url", "commit_timeout"}`` (mos): downloads the file over
  HTTP and answers once it has it;
- ``OTA.Commit``.

After a complete transfer it "reboots" (drops the connection and comes
back) running the new firmware: ``fw_version``/``fw_id`` from a zip's
``manifest.json`` (``version``, ``build_id``), or ``bin-SHA256[:12]`` of a
.bin image. Constructor options make it fail: ``ota_fail`` (a method it
answers with an error; for ``OTA.Write`` after ``ota_fail_after`` good
writes), ``ota_drop`` (a method at which it loses the connection instead),
``ota_silent`` (a method it never answers), ``ota_keep_fw`` (comes back with
the firmware it had), ``ota_write_delay`` (seconds each write takes);
``ota_update_answers=False`` makes it reboot into what ``OTA.Update``
downloaded without answering, like older Mongoose OS.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import random
import sys
import time
import zipfile
from typing import Any, Callable
from urllib.parse import urlparse

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from dashd.domain import shadow

log = Logger()


class RpcError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class _DeviceClientProtocol(WebSocketClientProtocol):
    device: SimulatedDevice

    def onOpen(self) -> None:
        self.device._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.device._message(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.device._closed(self, code, reason)


class _DeviceClientFactory(WebSocketClientFactory):
    protocol = _DeviceClientProtocol

    def __init__(self, device: SimulatedDevice, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.device = device

    def buildProtocol(self, addr: Any) -> _DeviceClientProtocol:
        proto = super().buildProtocol(addr)
        proto.device = self.device
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.device._connect_failed(reason)


class SimulatedDevice:
    def __init__(
        self,
        url: str,
        token: str,
        reactor: Any = None,
        dialect: str = "mos",
        heartbeat: bool | None = None,
        heartbeat_interval: float = 0,
        implements_delta: bool | None = None,
        reconnect: bool = True,
        reconnect_delay: tuple[float, float] = (1.0, 30.0),
        bind_address: str | None = None,
        token_in_url: bool = False,
        tls_options: Any = None,
        fw_version: str = "1.0.0",
        fw_id: str = "20261125-000000",
        ota_fail: str | None = None,
        ota_fail_after: int = 0,
        ota_drop: str | None = None,
        ota_silent: str | None = None,
        ota_keep_fw: bool = False,
        ota_write_delay: float = 0.0,
        ota_update_answers: bool = True,
        fs_get_delay: float = 0.0,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if dialect not in ("mos", "mdash"):
            raise ValueError("dialect must be mos or mdash")
        self.url = url
        self.token = token
        self.reactor = reactor
        self.dialect = dialect
        self.heartbeat = (dialect == "mos") if heartbeat is None else heartbeat
        self.heartbeat_interval = heartbeat_interval
        self.implements_delta = (dialect == "mos") if implements_delta is None else implements_delta
        self.reconnect = reconnect
        self.reconnect_delay = reconnect_delay
        self.bind_address = bind_address
        self.token_in_url = token_in_url
        self.tls_options = tls_options
        # What Mongoose OS would put in src: the token's ID part and the
        # device's own hardware ID.
        self.mac = "".join(random.choice("0123456789ABCDEF") for _ in range(12))
        self.src = "%s-esp32_%s" % (token.split("-", 1)[0], self.mac[6:])
        self.info = {
            "app": "dashd-simulator",
            "fw_version": fw_version,
            "fw_id": fw_id,
            "arch": "esp32" if dialect == "mos" else "posix",
            "mac": self.mac,
            "ram_size": 294512,
            "ram_free": 201000,
        }
        self.reported: dict[str, Any] = {}
        self.pins: dict[int, int] = {}
        self.handlers: dict[str, Callable[[Any], Any]] = {
            "Sys.GetInfo": self._get_info,
            "RPC.List": self._rpc_list,
            "GPIO.Toggle": self._gpio_toggle,
            "GPIO.Read": self._gpio_read,
            "Sim.Echo": lambda params: params,
            "Sim.Sleep": self._sleep,
            "Sim.Fail": self._fail,
            "Sys.Reboot": self._reboot,
        }
        if self.implements_delta:
            self.handlers["Shadow.Delta"] = self._shadow_delta
        self.handlers.update({
            "OTA.Begin": self._ota_begin,
            "OTA.Write": self._ota_write,
            "OTA.End": self._ota_end,
            "OTA.Commit": self._ota_commit,
        })
        if dialect == "mos":
            self.handlers["OTA.Update"] = self._ota_update
        else:
            self.handlers.update({
                "FS.List": self._fs_list,
                "FS.Get": self._fs_get,
                "FS.Put": self._fs_put,
                "FS.Rename": self._fs_rename,
                "FS.Remove": self._fs_remove,
            })
        # The mdash dialect's file system: name -> content.
        self.files: dict[str, bytearray] = {}
        self.ota_update_answers = ota_update_answers
        # Seconds each FS.Get takes (a slow flash, for tests of pulls cut short).
        self.fs_get_delay = fs_get_delay
        self.ota_fail = ota_fail
        self.ota_fail_after = ota_fail_after
        self.ota_drop = ota_drop
        self.ota_silent = ota_silent
        self.ota_keep_fw = ota_keep_fw
        self.ota_write_delay = ota_write_delay
        # The transfer under way, and what tests look at afterwards.
        self.ota_size = 0
        self.ota_buffer = bytearray()
        self.ota_writes = 0
        self.ota_pending_writes = 0
        self.ota_max_pending_writes = 0
        self.ota_update_params: dict[str, Any] | None = None
        self.ota_image_sha256: str | None = None
        self.ota_committed: bool | None = None
        self.ota_reboots = 0
        # What the device received and how its connections ended (for tests):
        # the last frames (at most 1000), and the name of every method
        # called on it, in order, over all its connections.
        self.frames: list[dict[str, Any]] = []
        self.methods: list[str] = []
        self.connections = 0
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.started_at = time.monotonic()
        self._proto: _DeviceClientProtocol | None = None
        self._stopped = False
        self._next_id = 0
        self._calls: dict[int, Deferred[Any]] = {}
        self._waiting_open: list[Deferred[SimulatedDevice]] = []
        self._waiting_close: list[Deferred[SimulatedDevice]] = []
        self._waiting_frame: list[tuple[Callable[[dict[str, Any]], bool], Deferred[dict[str, Any]]]] = []
        self._retry = reconnect_delay[0]
        self._heartbeat_call: Any = None
        self._pending_connect: Any = None

    # Life cycle

    @property
    def online(self) -> bool:
        return self._proto is not None

    def start(self) -> SimulatedDevice:
        self._stopped = False
        self._connect()
        return self

    def stop(self) -> Deferred[SimulatedDevice]:
        """Stop reconnecting and close the connection."""
        self._stopped = True
        if self._pending_connect is not None and self._pending_connect.active():
            self._pending_connect.cancel()
        if self._proto is None:
            return succeed(self)
        d = self.wait_closed()
        self._proto.sendClose(1000, "simulator stopping")
        return d

    def drop(self) -> None:
        """Lose the connection abruptly (like a device losing power)."""
        if self._proto is not None:
            self._proto.transport.abortConnection()

    def wait_open(self) -> Deferred[SimulatedDevice]:
        if self._proto is not None:
            return succeed(self)
        d: Deferred[SimulatedDevice] = Deferred()
        self._waiting_open.append(d)
        return d

    def wait_closed(self) -> Deferred[SimulatedDevice]:
        d: Deferred[SimulatedDevice] = Deferred()
        self._waiting_close.append(d)
        return d

    def wait_frame(self, match: Callable[[dict[str, Any]], bool]) -> Deferred[dict[str, Any]]:
        """Fire with the first frame received from now on that C{match}es."""
        d: Deferred[dict[str, Any]] = Deferred()
        self._waiting_frame.append((match, d))
        return d

    def _connect(self) -> None:
        self._pending_connect = None
        url = self.url
        headers = {}
        if self.token_in_url:
            url += ("&" if "?" in url else "?") + "access_token=" + self.token
        else:
            headers["Authorization"] = "Bearer " + self.token
        factory = _DeviceClientFactory(
            self,
            url,
            headers=headers,
            protocols=["dash.mongoose-os.com"],
            reactor=self.reactor,
        )
        factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=30)
        bind = (self.bind_address, 0) if self.bind_address else None
        connectWS(factory, contextFactory=self.tls_options, bindAddress=bind)

    def _schedule_reconnect(self) -> None:
        if self._stopped or not self.reconnect:
            return
        delay = self._retry * random.uniform(0.8, 1.2)
        self._retry = min(self._retry * 2, self.reconnect_delay[1])
        self._pending_connect = self.reactor.callLater(delay, self._connect)

    def _connect_failed(self, reason: Any) -> None:
        self.close_reason = reason.getErrorMessage()
        log.warn("simulated device {id}: cannot connect: {reason}",
                 id=self.token.split("-", 1)[0], reason=self.close_reason)
        self._fire_closed()
        self._schedule_reconnect()

    def _opened(self, proto: _DeviceClientProtocol) -> None:
        self._proto = proto
        self.connections += 1
        self._retry = self.reconnect_delay[0]
        self.close_code = self.close_reason = None
        if self.heartbeat:
            self.call("Dash.Heartbeat", self._sysinfo()).addErrback(_ignore)
            if self.heartbeat_interval > 0:
                self._heartbeat_call = self.reactor.callLater(
                    self.heartbeat_interval, self._periodic_heartbeat
                )
        waiting, self._waiting_open = self._waiting_open, []
        for d in waiting:
            d.callback(self)

    def _closed(self, proto: _DeviceClientProtocol, code: int | None, reason: str | None) -> None:
        if self._proto is proto:
            self._proto = None
        else:
            # It never opened: refused, or the TLS handshake failed (the
            # reason says why, e.g. "certificate verify failed").
            log.warn("simulated device {id}: cannot connect: {reason}",
                     id=self.token.split("-", 1)[0], reason=reason)
        self.close_code = code
        self.close_reason = reason
        if self._heartbeat_call is not None and self._heartbeat_call.active():
            self._heartbeat_call.cancel()
        calls, self._calls = self._calls, {}
        for d in calls.values():
            d.errback(RpcError(-1, "connection closed"))
        self._fire_closed()
        self._schedule_reconnect()

    def _fire_closed(self) -> None:
        waiting, self._waiting_close = self._waiting_close, []
        for d in waiting:
            d.callback(self)

    def _periodic_heartbeat(self) -> None:
        if self._open():
            self.notify("Dash.Heartbeat", self._sysinfo())
            self._heartbeat_call = self.reactor.callLater(
                self.heartbeat_interval, self._periodic_heartbeat
            )

    # Sending

    def send_raw(self, data: str | bytes, binary: bool = False) -> None:
        """Send one WebSocket message as it is (for malformed-input tests)."""
        if not self._open():
            raise RuntimeError("not connected")
        payload = data.encode("utf-8") if isinstance(data, str) else data
        self._proto.sendMessage(payload, isBinary=binary)

    def _send(self, frame: dict[str, Any]) -> None:
        if self.dialect == "mos":
            frame.setdefault("src", self.src)
            frame.setdefault("dst", self.url)
            frame.setdefault("key", self.token)
        self.send_raw(json.dumps(frame))

    def call(self, method: str, params: Any = None) -> Deferred[Any]:
        """Call a method on the server; fires with the result or fails with
        L{RpcError}."""
        self._next_id += 1
        frame: dict[str, Any] = {"id": self._next_id, "method": method}
        if params is not None:
            frame["params"] = params
        d: Deferred[Any] = Deferred()
        self._calls[self._next_id] = d
        self._send(frame)
        return d

    def notify(self, method: str, params: Any = None) -> None:
        frame: dict[str, Any] = {"method": method}
        if params is not None:
            frame["params"] = params
        self._send(frame)

    def report(self, state: dict[str, Any]) -> Deferred[Any]:
        """Report state the way this dialect does."""
        self.reported = shadow.merge_patch(self.reported, state)
        if self.dialect == "mos":
            return self.call("Dash.Shadow.Update", {"state": {"reported": state}})
        return self.call("State.Set", state)

    def store(self, topic: str, value: Any) -> None:
        """mDashStore: append C{TOPIC JSON} to mdash.unsent (past the
        library's limit, it becomes mdash.unsent.old, replacing an older
        one), then say DB.NewData if connected."""
        line = ("%s %s\n" % (topic, json.dumps(value, separators=(",", ":")))).encode()
        self.files.setdefault(STORE_FILE, bytearray()).extend(line)
        if len(self.files[STORE_FILE]) > STORE_FILE_LIMIT:
            self.files[STORE_FILE + ".old"] = self.files.pop(STORE_FILE)
        if self._open():
            self.notify("DB.NewData", True)

    def stored_lines(self) -> list[str]:
        """Every line still on the device, oldest first (for tests)."""
        out: list[str] = []
        for name in sorted(self.files, key=lambda n: (not n.endswith(".old"), n)):
            out.extend(self.files[name].decode().splitlines())
        return out

    # Receiving

    def _message(self, payload: bytes) -> None:
        try:
            frame = json.loads(payload)
        except ValueError:
            log.warn("simulator: server sent invalid JSON: {payload!r}", payload=payload[:200])
            return
        if not isinstance(frame, dict):
            return
        self.frames.append(frame)
        if len(self.frames) > 1000:
            del self.frames[:500]
        waiting, self._waiting_frame = self._waiting_frame, []
        for match, d in waiting:
            if match(frame):
                d.callback(frame)
            else:
                self._waiting_frame.append((match, d))
        if self.dialect == "mos" and frame.get("dst") not in (None, self.src):
            return  # Mongoose OS drops frames addressed to someone else.
        if "method" in frame:
            self._request(frame)
        elif "id" in frame:
            d = self._calls.pop(frame["id"], None)
            if d is None:
                return
            if frame.get("error") is not None:
                error = frame["error"]
                d.errback(RpcError(error.get("code", 0), error.get("message", "")))
            else:
                d.callback(frame.get("result"))

    def _request(self, frame: dict[str, Any]) -> None:
        method = frame["method"]
        self.methods.append(sys.intern(method) if isinstance(method, str) else repr(method))
        params = frame.get("params", frame.get("args"))
        handler = self.handlers.get(method)
        if method.startswith("OTA.") and handler is not None:
            if method == self.ota_silent:
                return  # never answers
            if method == self.ota_drop and (
                method != "OTA.Write" or self.ota_writes >= self.ota_fail_after
            ):
                self._ota_reset()
                self.drop()  # loses power mid-way; comes back with what it had
                return
            if method == self.ota_fail and (
                method != "OTA.Write" or self.ota_writes >= self.ota_fail_after
            ):
                self._ota_reset()
                self._answer(frame, error=(500, "simulated failure of %s" % method))
                return
        if handler is None:
            if self.dialect == "mos":
                self._answer(frame, error=(404, "No handler for %s" % method))
            else:
                self._answer(frame, error=(-32601, "%s not found" % method))
            return
        try:
            result = handler(params)
        except RpcError as e:
            self._answer(frame, error=(e.code, e.message))
            return
        if isinstance(result, Deferred):
            result.addCallbacks(
                lambda r: self._answer(frame, result=r),
                lambda f: self._answer(
                    frame, error=(getattr(f.value, "code", 500), f.getErrorMessage())
                ),
            )
        else:
            self._answer(frame, result=result)

    def _open(self) -> bool:
        return self._proto is not None and self._proto.state == WebSocketClientProtocol.STATE_OPEN

    def _answer(self, frame: dict[str, Any], result: Any = None, error: tuple[int, str] | None = None) -> None:
        # A reply to a call that arrives while closing is lost, as on a device.
        if "id" not in frame or not self._open() or result is NEVER:
            return
        reply: dict[str, Any] = {"id": frame["id"]}
        if frame.get("src"):
            reply["dst"] = frame["src"]
        if error is not None:
            reply["error"] = {"code": error[0], "message": error[1]}
        elif result is not NO_RESULT:
            # (Mongoose OS says "done" with neither result nor error.)
            reply["result"] = result
        self._send(reply)

    # The methods it serves

    def _sysinfo(self) -> dict[str, Any]:
        info = dict(self.info)
        info["uptime"] = round(time.monotonic() - self.started_at, 3)
        return info

    def _get_info(self, params: Any) -> Any:
        return self._sysinfo()

    def _rpc_list(self, params: Any) -> Any:
        return sorted(self.handlers)

    def _pin(self, params: Any) -> int:
        if not isinstance(params, dict) or not isinstance(params.get("pin"), int):
            raise RpcError(400, "pin is required")
        return params["pin"]

    def _gpio_toggle(self, params: Any) -> Any:
        pin = self._pin(params)
        self.pins[pin] = 1 - self.pins.get(pin, 0)
        return {"value": self.pins[pin]}

    def _gpio_read(self, params: Any) -> Any:
        return {"value": self.pins.get(self._pin(params), 0)}

    def _sleep(self, params: Any) -> Any:
        seconds = params.get("seconds", 1) if isinstance(params, dict) else 1
        d: Deferred[Any] = Deferred()
        self.reactor.callLater(seconds, d.callback, {"slept": seconds})
        return d

    def _fail(self, params: Any) -> Any:
        params = params if isinstance(params, dict) else {}
        raise RpcError(params.get("code", 500), params.get("message", "simulated failure"))

    def _reboot(self, params: Any) -> Any:
        self.reactor.callLater(0.1, self.drop)
        return True

    def _shadow_delta(self, params: Any) -> Any:
        state = params.get("state") if isinstance(params, dict) else None
        if not isinstance(state, dict):
            raise RpcError(400, "state is required")
        # Apply what was asked, then say so.
        self.reactor.callLater(0, lambda: self.report(state).addErrback(_ignore))
        return True


    # The mDash library's file system

    def _fs_name(self, params: Any, key: str = "filename") -> str:
        name = params.get(key) if isinstance(params, dict) else None
        if not isinstance(name, str):
            raise RpcError(500, "filename required")
        return name

    def _fs_list(self, params: Any) -> Any:
        return list(self.files)

    def _fs_get(self, params: Any) -> Any:
        name = self._fs_name(params)
        offset = params.get("offset", 0)
        length = params.get("len", 512)
        if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 \
                or length < 0:
            raise RpcError(500, "offset and len must be numbers")
        if name not in self.files:
            raise RpcError(500, "fopen(%s/%s): 2" % (FS_ROOT, name))
        content = self.files[name]
        chunk = bytes(content[offset:offset + length])
        answer = {"filename": name, "offset": offset,
                  "left": len(content) - (len(chunk) + offset),
                  "data": base64.b64encode(chunk).decode("ascii")}
        if self.fs_get_delay > 0:
            d: Deferred[Any] = Deferred()
            self.reactor.callLater(self.fs_get_delay, d.callback, answer)
            return d
        return answer

    def _fs_put(self, params: Any) -> Any:
        name = self._fs_name(params)
        data = base64.b64decode(params.get("data") or "")
        if not params.get("append"):
            self.files[name] = bytearray()
        self.files.setdefault(name, bytearray()).extend(data)
        return {"filename": name, "written": len(data)}

    def _fs_rename(self, params: Any) -> Any:
        if not isinstance(params, dict) or not isinstance(params.get("src"), str) \
                or not isinstance(params.get("dst"), str):
            raise RpcError(500, "src and dst missing")
        src, dst = params["src"], params["dst"]
        self.files.pop(dst, None)  # as the library does: remove(dst) first
        if src not in self.files:
            raise RpcError(500, "rename(%s/%s, %s/%s) failed: 2" % (FS_ROOT, src, FS_ROOT, src))
        self.files[dst] = self.files.pop(src)
        return True

    def _fs_remove(self, params: Any) -> Any:
        name = self._fs_name(params)
        if self.files.pop(name, None) is None:
            raise RpcError(500, "remove(%s/%s) failed: 2" % (FS_ROOT, name))
        return True

    # Firmware updates

    def _ota_reset(self) -> None:
        self.ota_size = 0
        self.ota_buffer = bytearray()
        self.ota_writes = 0

    def _ota_percent(self) -> None:
        if self.dialect == "mdash" and self._open():
            percent = None
            if self.ota_size:
                percent = len(self.ota_buffer) * 100 // self.ota_size
            self.notify("State.Set", {"ota": {"percent": percent}})

    def _ota_begin(self, params: Any) -> Any:
        if self.ota_size:
            raise RpcError(500, "OTA already in progress")
        size = params.get("size") if isinstance(params, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise RpcError(400, "size is required")
        self._ota_reset()
        self.ota_size = size
        self._ota_percent()
        return True

    def _ota_write(self, params: Any) -> Any:
        if not self.ota_size:
            raise RpcError(500, "call OTA.Begin")
        data = params.get("data") if isinstance(params, dict) else None
        if not isinstance(data, str):
            raise RpcError(500, "data required")
        try:
            chunk = base64.b64decode(data, validate=True)
        except ValueError:
            raise RpcError(500, "data is not base64")
        self.ota_buffer += chunk
        self.ota_writes += 1
        self.ota_pending_writes += 1
        self.ota_max_pending_writes = max(self.ota_max_pending_writes, self.ota_pending_writes)

        def written(_: Any = None) -> Any:
            self.ota_pending_writes -= 1
            self._ota_percent()
            return {"queued": len(chunk)}

        if self.ota_write_delay > 0:
            d: Deferred[Any] = Deferred()
            self.reactor.callLater(self.ota_write_delay, d.callback, None)
            return d.addCallback(written)
        return written()

    def _ota_end(self, params: Any) -> Any:
        if not self.ota_size:
            raise RpcError(500, "call OTA.Begin")
        image, size = bytes(self.ota_buffer), self.ota_size
        self._ota_reset()
        self._ota_percent()
        if len(image) != size:
            raise RpcError(500, "got %d bytes of %d" % (len(image), size))
        self._install(image)
        return True

    def _ota_update(self, params: Any) -> Any:
        url = params.get("url") if isinstance(params, dict) else None
        if not isinstance(url, str) or not url:
            raise RpcError(-1, "Malformed request")
        self.ota_update_params = dict(params)
        import treq

        buffer = bytearray()

        def got(response: Any) -> Any:
            if response.code != 200:
                raise RpcError(-1, "download failed: HTTP %d" % response.code)
            return treq.collect(response, buffer.extend)

        def done(_: Any) -> Any:
            self._install(bytes(buffer))
            if not self.ota_update_answers:
                return NEVER
            return NO_RESULT

        def failed(failure: Any) -> None:
            if failure.check(RpcError):
                failure.raiseException()
            raise RpcError(-1, "download failed: %s" % failure.getErrorMessage())

        d = treq.get(url, persistent=False, reactor=self.reactor)
        return d.addCallback(got).addCallback(done).addErrback(failed)

    def _ota_commit(self, params: Any) -> Any:
        self.ota_committed = True
        return NO_RESULT if self.dialect == "mos" else True

    def _install(self, image: bytes) -> None:
        """Take the new firmware and reboot into it (after answering)."""
        self.ota_image_sha256 = hashlib.sha256(image).hexdigest()
        version, fw_id = self.info["fw_version"], "bin-" + self.ota_image_sha256[:12]
        if image[:4] == b"PK\x03\x04":
            try:
                with zipfile.ZipFile(io.BytesIO(image)) as z:
                    name = [n for n in z.namelist() if n.split("/")[-1] == "manifest.json"][0]
                    manifest = json.loads(z.read(name))
                version = str(manifest.get("version", version))
                fw_id = str(manifest.get("build_id", fw_id))
            except (zipfile.BadZipFile, IndexError, ValueError, KeyError):
                pass

        def reboot() -> None:
            self.ota_reboots += 1
            if not self.ota_keep_fw:
                self.info["fw_version"], self.info["fw_id"] = version, fw_id
                self.ota_committed = False
            self.started_at = time.monotonic()
            self.drop()

        self.reactor.callLater(0.1, reboot)


# What a Mongoose OS handler answers when it has nothing to say.
NO_RESULT = object()
# What a handler answers when it never answers.
NEVER = object()

# The mDash library's stored data: its file, and the size past which the
# file is renamed to FILE.old (replacing an older one).
STORE_FILE = "mdash.unsent"
STORE_FILE_LIMIT = 32768
FS_ROOT = "/spiffs"


def _ignore(failure: Any) -> None:
    """For calls whose outcome the simulated firmware does not care about."""


# Command line


def _store_reading(device: SimulatedDevice) -> None:
    device.store("temperature", {"value": round(random.uniform(18, 25), 1)})


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m dashd.simulator",
        description="Run simulated Mongoose OS / mDash devices against a dashd.",
    )
    p.add_argument("--url", required=True, help="device channel, e.g. ws://127.0.0.1:8080/api/v2/rpc")
    p.add_argument("--token", action="append", default=[], help="device token (repeatable)")
    p.add_argument("--tokens-file", help="file with one device token a line")
    p.add_argument("--dialect", choices=("mos", "mdash"), default="mos")
    p.add_argument("--heartbeat-interval", type=float, default=0,
                   help="seconds between periodic heartbeats (mos; 0: only on connect)")
    p.add_argument("--bind", action="append", default=[],
                   help="local addresses to connect from, used in turn (e.g. 127.0.0.2)")
    p.add_argument("--ca", help="CA certificate (PEM) to verify a wss:// server with")
    p.add_argument("--token-in-url", action="store_true", help="send the token as ?access_token=")
    p.add_argument("--ramp", type=float, default=0, help="connections started a second (0: all at once)")
    p.add_argument("--store-every", type=float, default=0, metavar="SECONDS",
                   help="mdash: store a temperature reading that often with mDashStore "
                        "(dashd pulls it), whether connected or not (0: never)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p.parse_args(argv)


def _tls_options(url: str, ca_file: str | None) -> Any:
    parsed = urlparse(url)
    if parsed.scheme != "wss":
        return None
    from twisted.internet import ssl

    if ca_file:
        with open(ca_file, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
        return ssl.optionsForClientTLS(parsed.hostname or "", trustRoot=trust)
    return ssl.optionsForClientTLS(parsed.hostname or "")


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    tokens = list(args.token)
    if args.tokens_file:
        with open(args.tokens_file) as f:
            tokens += [line.strip() for line in f if line.strip()]
    if not tokens:
        print("give at least one --token or a --tokens-file", file=sys.stderr)
        return 2
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall
    from twisted.logger import globalLogBeginner, textFileLogObserver

    if not args.quiet:
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    tls = _tls_options(args.url, args.ca)
    devices = []
    for i, token in enumerate(tokens):
        device = SimulatedDevice(
            args.url,
            token,
            reactor,
            dialect=args.dialect,
            heartbeat_interval=args.heartbeat_interval,
            bind_address=args.bind[i % len(args.bind)] if args.bind else None,
            token_in_url=args.token_in_url,
            tls_options=tls,
        )
        devices.append(device)
        delay = i / args.ramp if args.ramp > 0 else 0
        reactor.callLater(delay, device.start)
        if args.store_every > 0:
            if args.dialect != "mdash":
                print("--store-every needs --dialect mdash", file=sys.stderr)
                return 2
            LoopingCall(_store_reading, device).start(args.store_every, now=False)

    def status() -> None:
        online = sum(1 for d in devices if d.online)
        print("%d of %d simulated devices online" % (online, len(devices)), flush=True)
        reactor.callLater(10 if online == len(devices) else 2, status)

    reactor.callLater(1, status)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
