"""
The OpenAPI 3.1 description of the REST API, served at
``/api/v2/openapi.json``. The test suite runs schemathesis against a live
dashd with it (tests/test_openapi.py), so a route or an answer that
changes without this description failing a test is a bug in that test.

The WebSocket doors (``/api/v2/rpc`` for devices, ``/api/v2/notify``) and
the operational endpoints (``/healthz``, ``/readyz``, ``/metrics``) are
described in the README: they are not REST.
"""

from __future__ import annotations

from typing import Any

from dashd.api.base import MAX_NAME_LENGTH
from dashd.config import Config

JSON = "application/json"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": "#/components/schemas/%s" % name}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {JSON: {"schema": _ref("Error")}},
    }
    if headers:
        out["headers"] = headers
    return out


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}

ERRORS = {
    "400": _error("Bad JSON, unknown fields or bad values; the message names them"),
    "401": _error("No API key, or an unknown, expired or malformed one, or a device token",
                  {"WWW-Authenticate": {"schema": {"type": "string"}}}),
    "403": _error("The key may not do this"),
    "404": _error("No such device (or one the key may not see)"),
    "409": _error("Stale shadow version, or revoking the account's last admin key"),
    "413": _error("The body or the shadow is too large or too deep"),
    "429": _error("Too many calls in flight to the device", _RETRY_AFTER),
    "502": _error("The device answered with a JSON-RPC error: its code and message"),
    "503": _error("The device is offline, the store is unavailable or dashd is stopping",
                  _RETRY_AFTER),
    "504": _error("The device did not answer within the timeout"),
}


def _responses(ok: dict[str, Any], *codes: str) -> dict[str, Any]:
    out = {"200": ok}
    for code in ("401",) + codes:
        out[code] = ERRORS[code]
    return out


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _body(schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": schema}}}


NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_NAME_LENGTH,
    "pattern": r"\S",
    "description": "leading and trailing white space is removed",
}
ACCOUNT_ID = {"type": "string", "maxLength": 128}
SHARED_WITH = {
    "description": "account IDs the device is shared with: comma-separated, or a list",
    "oneOf": [
        {"type": "string", "pattern": r"^[^,]{0,128}(,[^,]{0,128})*$"},
        {"type": "array", "items": ACCOUNT_ID},
    ],
}
SECTION_PATCH = {
    "description": "merged key by key; null deletes a key; the section given as null is emptied",
    "type": ["object", "null"],
}


def document(config: Config, version: str) -> dict[str, Any]:
    device_id = {"name": "device_id", "in": "path", "required": True,
                 "schema": {"type": "string", "minLength": 1}}
    method = {"name": "method", "in": "path", "required": True,
              "schema": {"type": "string", "minLength": 1, "maxLength": 128},
              "description": "the JSON-RPC method, e.g. Sys.GetInfo"}
    timeout = {
        "name": "timeout", "in": "query", "required": False,
        "description": "seconds to wait for the device (default %g)"
        % config["rpc.default_timeout"],
        "schema": {"type": "number", "exclusiveMinimum": 0,
                   "maximum": config["rpc.max_timeout"]},
    }
    rpc_errors = ("400", "404", "429", "502", "503", "504")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dashd REST API",
            "version": version,
            "description": (
                "Devices, their shadows, RPC calls to them and API keys. Every request "
                "carries an API key (Authorization: Bearer KEY, or ?access_token=KEY). "
                "Every failure is {\"error\": {\"code\", \"message\"}}."
            ),
        },
        "servers": [{"url": "/api/v2"}],
        "security": [{"bearer": []}, {"access_token": []}],
        "paths": {
            "/devices": {
                "get": {
                    "operationId": "listDevices",
                    "summary": "The devices the key may see",
                    "responses": _responses(_ok("devices", {"type": "array",
                                                            "items": _ref("Device")})),
                },
                "post": {
                    "operationId": "registerDevice",
                    "summary": "Register a device; the reply holds its token, shown this once",
                    "requestBody": _body({
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"name": NAME, "shared_with": SHARED_WITH},
                    }),
                    "responses": _responses(_ok("the device and its token",
                                                _ref("RegisteredDevice")), "400", "413"),
                },
            },
            "/devices/{device_id}": {
                "parameters": [device_id],
                "get": {
                    "operationId": "getDevice",
                    "summary": "One device",
                    "responses": _responses(_ok("the device", _ref("Device")), "404"),
                },
                "post": {
                    "operationId": "changeDevice",
                    "summary": "Change name, sharing and/or shadow, all or nothing",
                    "requestBody": _body({
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "name": NAME,
                            "shared_with": SHARED_WITH,
                            "shadow": _ref("ShadowUpdate"),
                        },
                    }),
                    "responses": _responses(_ok("the device", _ref("Device")),
                                            "400", "403", "404", "409", "413"),
                },
                "delete": {
                    "operationId": "deleteDevice",
                    "summary": "Delete it; a connected device is disconnected (close code 4004)",
                    "responses": _responses(_ok("deleted", _ref("Deleted")), "403", "404"),
                },
            },
            "/devices/{device_id}/rpc/{method}": {
                "parameters": [device_id, method],
                "get": {
                    "operationId": "callDeviceWithoutParams",
                    "summary": "Call a method on the device, without params",
                    "parameters": [timeout],
                    "responses": _responses(_ok("the device's result", {}), *rpc_errors),
                },
                "post": {
                    "operationId": "callDevice",
                    "summary": "Call a method on the device; the body is its params",
                    "parameters": [timeout],
                    "requestBody": _body({"description": "the params: any JSON value"}),
                    "responses": _responses(_ok("the device's result", {}),
                                            *(rpc_errors + ("413",))),
                },
            },
            "/keys": {
                "get": {
                    "operationId": "listKeys",
                    "summary": "The account's API keys (never their secrets)",
                    "responses": _responses(_ok("keys", {"type": "array",
                                                         "items": _ref("Key")})),
                },
                "post": {
                    "operationId": "createKey",
                    "summary": "Create an API key; the reply holds the secret, shown this once",
                    "requestBody": _body({
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "name": NAME,
                            "kind": {"type": "string", "enum": ["admin"]},
                            "expires": {"type": ["number", "null"],
                                        "description": "Unix time in the future; "
                                                       "null: never"},
                        },
                    }),
                    "responses": _responses(_ok("the key and its secret", _ref("CreatedKey")),
                                            "400", "413"),
                },
            },
            "/keys/{key_id}": {
                "parameters": [{"name": "key_id", "in": "path", "required": True,
                                "schema": {"type": "string", "minLength": 1}}],
                "delete": {
                    "operationId": "revokeKey",
                    "summary": "Revoke a key at once",
                    "responses": _responses(_ok("revoked", _ref("Deleted")), "404", "409"),
                },
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "access_token": {"type": "apiKey", "in": "query", "name": "access_token"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {"code": {"type": "integer"},
                                       "message": {"type": "string"}},
                    }},
                },
                "Deleted": {
                    "type": "object",
                    "required": ["id", "deleted"],
                    "properties": {"id": {"type": "string"}, "deleted": {"const": True}},
                },
                "Shadow": {
                    "type": "object",
                    "required": ["state", "tags", "version", "timestamp"],
                    "properties": {
                        "state": {
                            "type": "object",
                            "required": ["desired", "reported", "delta"],
                            "properties": {
                                "desired": {"type": "object"},
                                "reported": {"type": "object"},
                                "delta": {"type": "object"},
                            },
                        },
                        "tags": {"type": "object"},
                        "version": {"type": "integer", "minimum": 0},
                        "timestamp": {"type": ["number", "null"]},
                    },
                },
                "ShadowUpdate": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "state": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"desired": SECTION_PATCH,
                                           "reported": SECTION_PATCH},
                        },
                        "tags": SECTION_PATCH,
                        "version": {"type": ["integer", "null"], "minimum": 0,
                                    "description": "the version read; a stale one gets 409"},
                    },
                },
                "Device": {
                    "type": "object",
                    "required": ["id", "name", "online", "created", "last_seen", "info",
                                 "shared_with", "shadow"],
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "online": {"type": "boolean"},
                        "created": {"type": "number"},
                        "last_seen": {"type": ["number", "null"]},
                        "info": {"type": "object"},
                        "shared_with": {"type": "string"},
                        "shadow": _ref("Shadow"),
                    },
                },
                "RegisteredDevice": {
                    "allOf": [_ref("Device"), {
                        "type": "object",
                        "required": ["token"],
                        "properties": {"token": {"type": "string"}},
                    }],
                },
                "Key": {
                    "type": "object",
                    "required": ["id", "name", "kind", "account_id", "created", "expires"],
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "account_id": {"type": "string"},
                        "created": {"type": "number"},
                        "expires": {"type": ["number", "null"]},
                    },
                },
                "CreatedKey": {
                    "allOf": [_ref("Key"), {
                        "type": "object",
                        "required": ["key"],
                        "properties": {"key": {"type": "string"}},
                    }],
                },
            },
        },
    }
