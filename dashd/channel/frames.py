"""
JSON-RPC frames in the dialect Mongoose OS and the mDash library speak.

What a device sends, one JSON object a frame::

    {"id": 7, "method": "Dash.Heartbeat", "params": {...},
     "src": "d1-esp32_0A1B2C", "dst": "wss://host/api/v2/rpc", "key": "..."}
    {"method": "Dash.Log", "args": {"fd": 1, "data": "...", "t": 1.5}}
    {"id": 12, "result": {...}}
    {"id": 13, "error": {"code": 404, "message": "No handler for X"}}

``jsonrpc`` is often missing, old firmware says ``args`` for ``params``,
``src``/``dst``/``tag``/``key``/``auth``/``v`` may be present and are
ignored except ``src``, which a reply must echo as ``dst`` because Mongoose
OS drops frames addressed to anybody else. A frame without ``id`` (or with
``id: null``) expects no answer.

What dashd sends: requests ``{"id", "method", "params"?, "dst"?}`` and
replies ``{"id", "result" | "error", "dst"?}``; ``dst`` is the ``src`` the
device announced, when it announced one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Union

from dashd.jsontext import compact

# JSON-RPC 2.0 error codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# What devices answer a method they do not have: JSON-RPC's code, and
# Mongoose OS's 404.
NOT_IMPLEMENTED = (METHOD_NOT_FOUND, 404)
# Codes dashd uses beyond JSON-RPC's own, in the HTTP-like style Mongoose OS
# firmware uses for its errors.
CONFLICT = 409
TOO_LARGE = 413
TOO_MANY = 429
UNAVAILABLE = 503

RpcId = Union[int, float, str]


@dataclass(frozen=True)
class Request:
    """A call from the device; ``id`` is None for a notification."""

    method: str
    params: Any
    id: RpcId | None
    src: str | None


@dataclass(frozen=True)
class Response:
    """A device's answer to a call dashd made."""

    id: RpcId
    result: Any = None
    error: dict[str, Any] | None = None


class InvalidFrame(Exception):
    """A JSON value that is not a frame; ``id`` is set when one was readable."""

    def __init__(self, message: str, id: RpcId | None = None, src: str | None = None):
        super().__init__(message)
        self.id = id
        self.src = src


def _valid_id(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def parse_frame(value: Any) -> Request | Response:
    """
    Classify one decoded JSON value, or raise L{InvalidFrame}.
    """
    if not isinstance(value, dict):
        raise InvalidFrame("a frame must be a JSON object (batches are not supported)")
    raw_id = value.get("id")
    src = value.get("src")
    if not isinstance(src, str) or not src:
        src = None
    if raw_id is not None and not _valid_id(raw_id):
        raise InvalidFrame("id must be a number or a string", src=src)
    frame_id: RpcId | None = raw_id
    method = value.get("method")
    if method is not None:
        if not isinstance(method, str) or not method:
            raise InvalidFrame("method must be a non-empty string", frame_id, src)
        params = value["params"] if "params" in value else value.get("args")
        return Request(method=method, params=params, id=frame_id, src=src)
    if frame_id is None:
        raise InvalidFrame("a frame needs a method, or an id with a result or error", src=src)
    if "error" in value and value["error"] is not None:
        return Response(id=frame_id, error=_normalise_error(value["error"]))
    # Mongoose OS answers success without a result at all when a handler has
    # nothing to say (mg_rpc_send_responsef(ri, NULL), and
    # mg_rpc_send_errorf(ri, 0, ...), as OTA.Commit and OTA.Update do).
    return Response(id=frame_id, result=value.get("result"))


def _normalise_error(error: Any) -> dict[str, Any]:
    if isinstance(error, dict):
        code = error.get("code")
        if not isinstance(code, int) or isinstance(code, bool):
            code = INTERNAL_ERROR
        message = error.get("message")
        if not isinstance(message, str):
            message = "" if message is None else json.dumps(message)
        return {"code": code, "message": message}
    if isinstance(error, str):
        return {"code": INTERNAL_ERROR, "message": error}
    return {"code": INTERNAL_ERROR, "message": json.dumps(error)}


def encode_request(
    id: RpcId, method: str, params: Any = None, dst: str | None = None
) -> str:
    frame: dict[str, Any] = {"id": id, "method": method}
    if params is not None:
        frame["params"] = params
    if dst:
        frame["dst"] = dst
    return compact(frame)


def encode_result(id: RpcId, result: Any, dst: str | None = None) -> str:
    frame: dict[str, Any] = {"id": id, "result": result}
    if dst:
        frame["dst"] = dst
    return compact(frame)


def encode_error(
    id: RpcId | None, code: int, message: str, dst: str | None = None
) -> str:
    frame: dict[str, Any] = {"id": id, "error": {"code": code, "message": message}}
    if dst:
        frame["dst"] = dst
    return compact(frame)
