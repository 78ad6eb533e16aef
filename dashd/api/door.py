"""
The site's root resource: the busiest requests are answered here, before
Klein's routing; everything else goes on to Klein.

- C{GET|POST /api/v2/devices/ID/rpc/METHOD}, the REST to device bridge;
- C{GET /api/v2/devices/ID}, a device's view (what a dashboard or a
  script polls, beside a fleet job: issue 18);
- C{/api/v2/rpc} and C{/api/v2/notify}, the WebSocket upgrades (a fleet
  reconnecting is thousands of them).

Klein's dispatch of a request (binding the URL map, five closures, two more
Deferreds, and an error handler that refers to itself, so that each request
is left as garbage that only the cycle collector frees) cost more than the
rest of an RPC call. Worse, requests in flight when a collection ran were
promoted with that garbage to the oldest generation, whose collection walks
every object of every connected device: pauses of 0.1-0.9 s with 10,000
devices (docs/performance.md). The handlers are the API's own methods, and
failures are answered by the same table as on the Klein routes
(L{dashd.api.status}), so the answers are the same either way; the Klein
routes stay for HEAD and for the OpenAPI description.
"""

from __future__ import annotations

import re
from typing import Any, Coroutine
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from dashd.api import status

log = Logger()

DEVICE_CHANNEL = b"/api/v2/rpc"
NOTIFY_CHANNEL = b"/api/v2/notify"
# Path segments as sent (percent-encoded).
_RPC_PATH = re.compile(rb"^/api/v2/devices/([^/]+)/rpc/([^/]+)$")
_DEVICE_PATH = re.compile(rb"^/api/v2/devices/([^/]+)$")
# What Klein's device converter (dashd.api.devices) leaves to other routes.
_NOT_DEVICES = ("data", "count")

# What the door answers itself, as (method, path template); "*": any
# method (a WebSocket upgrade). tests/test_openapi.py checks each is in the
# OpenAPI description or excluded from it for a reason.
ROUTES = (
    ("*", DEVICE_CHANNEL.decode()),
    ("*", NOTIFY_CHANNEL.decode()),
    ("GET", "/api/v2/devices/{device_id}/rpc/{method}"),
    ("POST", "/api/v2/devices/{device_id}/rpc/{method}"),
    ("GET", "/api/v2/devices/{device_id}"),
)


class Door(Resource):
    isLeaf = True

    def __init__(self, api: Any, klein_resource: Resource) -> None:
        super().__init__()
        self._api = api
        self._klein = klein_resource

    def render(self, request: Any) -> Any:
        path = request.path
        if b"//" in path or ((b"%" in path or not path.isascii()) and not _utf8(path)):
            # Shapes no route has: Klein would answer an empty segment with
            # a redirect (merging the slashes) and a path that is not UTF-8
            # once decoded with a text of its own, each with a traceback.
            # The audit log (dashd.api.audit) reads the path as sent: a
            # route reached through "//" would escape it.
            if b"//" in path:
                error = status.HttpError(404, "no such route: %s (empty path segments are "
                                              "not allowed)" % _text(path))
            else:
                error = status.HttpError(400, "the path is not UTF-8 once percent-decoded: %s"
                                              % _text(path))
            _deliver(status.render(request, Failure(error)), request)
            return NOT_DONE_YET
        if path == DEVICE_CHANNEL:
            return self._serve(request, self._api.device_channel_resource(request))
        if path == NOTIFY_CHANNEL:
            return self._serve(request, self._api.notify_channel_resource(request))
        if request.method == b"GET":
            m = _DEVICE_PATH.match(path)
            if m is not None:
                device_id = unquote_to_bytes(m.group(1)).decode("utf-8")
                if device_id not in _NOT_DEVICES:
                    return self._serve(request, self._api.get_device(request, device_id))
        if request.method in (b"GET", b"POST"):
            m = _RPC_PATH.match(path)
            if m is not None:
                # Decoded as Klein decodes its route arguments (the path is
                # UTF-8 once percent-decoded: checked above).
                device_id = unquote_to_bytes(m.group(1)).decode("utf-8")
                method = unquote_to_bytes(m.group(2)).decode("utf-8")
                return self._serve(request, self._api.rpc_call(request, device_id, method))
        return self._klein.render(request)

    def _serve(self, request: Any, handler: Coroutine[Any, Any, Any]) -> Any:
        d = ensureDeferred(handler)
        # The client went away: stop waiting (a device call is forgotten).
        request.notifyFinish().addErrback(_cancel, d)
        d.addCallbacks(_deliver, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        d.addErrback(log.failure, "writing an answer")
        return NOT_DONE_YET

    def _failed(self, failure: Failure, request: Any) -> None:
        try:
            if _ended(request):
                if not failure.check(CancelledError):
                    log.failure("a request failed after it ended", failure)
                return
            # The one answer to every failure, as on the Klein routes.
            _deliver(status.render(request, failure), request)
        finally:
            _let_go(failure)


def _utf8(path: bytes) -> bool:
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _text(path: bytes) -> str:
    text = path.decode("latin-1")
    return text if len(text) <= 200 else text[:200] + "..."


def _let_go(failure: Failure) -> None:
    """
    Cut what keeps an answered (and, if unexpected, logged) failure in
    reference cycles: its traceback, whose frames refer back to it, and the
    link a failed Deferred awaited in a coroutine puts on its exception
    (C{__failure__}). Otherwise every refused request (an offline device, a
    wrong token) is garbage that only a full collection frees.
    (Failure.cleanFailure does more, formatting every frame, and test
    runners such as pytest-twisted turn it off.)
    """
    failure.tb = None
    error = failure.value
    error.__traceback__ = None
    vars(error).pop("__failure__", None)


def _ended(request: Any) -> bool:
    return bool(request.finished or request._disconnected)


def _cancel(_: Any, d: Any) -> None:
    d.cancel()


def _deliver(result: Any, request: Any) -> None:
    if _ended(request):
        return
    if IResource.providedBy(result):
        # A WebSocket upgrade: the resource takes the connection over.
        request.render(result)
        channel = request.channel
        if channel is not None and channel.transport is None:
            # Taken over: the HTTP channel and this request, which refer to
            # each other, are done with. Without the link they are freed
            # now, not by a full collection (which walks the whole fleet).
            channel.requests.clear()
        return
    if result is not None:
        request.write(result)
    request.finish()
