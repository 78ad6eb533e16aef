"""
The OpenAPI 3.1 description of the REST API, served at
``/api/v2/openapi.json``. It is kept true both ways: tests/test_openapi.py
checks that every route of the app is described here (or in its list of
exclusions, each with the reason) and that everything described here is a
route, and runs schemathesis against a live dashd with it, so a route or an
answer that changes without this description failing a test is a bug in
that test. Limits and patterns are the constants the code checks with.

The WebSocket doors (``/api/v2/rpc`` for devices, ``/api/v2/notify``) and
the operational endpoints (``/healthz``, ``/readyz``, ``/metrics``) are
described in the README: they are not REST.
"""

from __future__ import annotations

from typing import Any

from dashd.api.ota import AUTO_COMMIT_VALUES
from dashd.app import calls as calls_app
from dashd.app import ranges, records, sessions
from dashd.app.devices import MAX_METHOD_LENGTH, MAX_PAGE
from dashd.app.firmware import MAX_COMMIT_TIMEOUT
from dashd.config import Config
from dashd.domain.access import (
    ACCOUNT_ID_PATTERN,
    MAX_SCOPE_DEVICES,
    MAX_SCOPE_ENTRIES,
    MAX_SCOPE_ENTRY_LENGTH,
)
from dashd.domain import calls
from dashd.domain import query as device_query
from dashd.domain.model import KEY_KINDS, MAX_NAME_LENGTH

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
    "409": _error("Stale shadow version, revoking the account's last admin key, a firmware "
                  "update already running or none to commit, cancelling a queued call that "
                  "was sent or has ended"),
    "413": _error("The body, the shadow or the firmware file is too large (or too deep)"),
    "415": _error("A firmware file of a kind dashd does not know"),
    "429": _error("Too many calls in flight to the device, too many queued calls for it or "
                  "its caller's account, too many requests with this key, "
                  "or too many failed authentications from this address", _RETRY_AFTER),
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
SHARE_SCOPE = {
    "description": "what the account may do with the device beyond seeing it: rpc, the "
                   "methods it may call (default: any but those for the owner: OTA.*, "
                   "Config.*, FS.*, Sys.Reboot, Sys.FactoryReset, which a pattern never "
                   "grants, only their exact name); write, the desired keys it may change "
                   "(default: all)",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "rpc": {"type": "array", "maxItems": 100,
                "items": {"type": "string", "minLength": 1, "maxLength": 128}},
        "write": {"type": "array", "maxItems": 100,
                  "items": {"type": "string", "minLength": 1, "maxLength": 128,
                            "pattern": r"^[^.]+(\.[^.]+)*$"}},
    },
}
SHARED_WITH = {
    "description": "account IDs the device is shared with: comma-separated, or a list (the "
                   "shares that stay keep their scope), or an object of account IDs and "
                   "each share's scope (null: the default)",
    "oneOf": [
        {"type": "string",
         "pattern": r"^ *(%s)? *(, *(%s)? *)*$" % (ACCOUNT_ID_PATTERN, ACCOUNT_ID_PATTERN)},
        {"type": "array", "items": {
            "type": "string", "pattern": r"^ *(%s)? *$" % ACCOUNT_ID_PATTERN,
            "description": "an account ID; white space around it and empty items are ignored"}},
        {"type": "object",
         "propertyNames": {"pattern": r"^ *([A-Za-z0-9_.:-]{1,64})? *$"},
         "additionalProperties": {"oneOf": [{"type": "null"}, SHARE_SCOPE]}},
    ],
}
OFFSET = {"type": "integer", "minimum": -records.MAX_OFFSET, "maximum": records.MAX_OFFSET}
SCOPE_ENTRIES = {
    "type": "array",
    "maxItems": MAX_SCOPE_ENTRIES,
    "items": {"type": "string", "minLength": 1, "maxLength": MAX_SCOPE_ENTRY_LENGTH},
}
SECTION_PATCH = {
    "description": "merged key by key; null deletes a key; the section given as null is emptied",
    "type": ["object", "null"],
}


def document(config: Config, version: str) -> dict[str, Any]:
    device_id = {"name": "device_id", "in": "path", "required": True,
                 "schema": {"type": "string", "minLength": 1}}
    method = {"name": "method", "in": "path", "required": True,
              "schema": {"type": "string", "minLength": 1, "maxLength": MAX_METHOD_LENGTH},
              "description": "the JSON-RPC method, e.g. Sys.GetInfo"}
    timeout = {
        "name": "timeout", "in": "query", "required": False,
        "description": "seconds to wait for the device (default %g)"
        % config["rpc.default_timeout"],
        "schema": {"type": "number", "exclusiveMinimum": 0,
                   "maximum": config["rpc.max_timeout"]},
    }
    rpc_errors = ("400", "404", "429", "502", "503", "504")
    where = {
        "name": "where", "in": "query", "required": False,
        "description": "a device query: fields id, name, online, last_seen, created, "
                       "account_id, shared_with, info.KEY..., shadow.desired.KEY..., "
                       "shadow.reported.KEY..., shadow.tags.KEY..., shadow.version; "
                       "=, !=, <, <=, >, >=, in [...], exists, matches \"GLOB\", and, or, "
                       "not, parentheses; a string that starts like a version compares as "
                       "one (\"1.10.0\" > \"1.9.2\"). E.g. shadow.tags.site = \"berlin\" "
                       "and info.fw_version < \"1.4.0\" and not online. A query that cannot "
                       "be read is a 400 saying where and what was expected",
        "schema": {"type": "string", "minLength": 1, "maxLength": device_query.MAX_QUERY_LENGTH},
    }
    call_id = {"name": "call_id", "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1}}
    seconds = {"type": "number", "exclusiveMinimum": 0}
    query = query_arg = {"in": "query", "required": False}  # (a query argument)
    data_params = [
        dict(query, name="skip", description="where to start; negative counts from the end "
             "(default: -limit, the last ones)",
             schema=OFFSET),
        dict(query, name="limit", description="how many (default %d)"
             % records.DEFAULT_DATA_LIMIT,
             schema={"type": "integer", "minimum": 1, "maximum": records.MAX_DATA_LIMIT}),
        dict(query, name="filter", description="only points whose key or JSON value holds it",
             schema={"type": "string", "minLength": 1,
                     "maxLength": records.MAX_FILTER_LENGTH}),
    ]
    range_time = ("seconds since the epoch (fractions allowed), negative: seconds before now, "
                  "or an ISO 8601 time (UTC unless it says)")
    list_style = {"style": "form", "explode": True}
    range_params = [
        dict(query, name="from", description="a time range instead of positions: its start, "
             + range_time + ". With from, skip and filter are refused",
             schema={"type": "string", "minLength": 1}),
        dict(query, name="to", description="the range's end (excluded; default: now), "
             + range_time, schema={"type": "string", "minLength": 1}),
        dict(query, name="bucket", description="with from: the range in buckets this many "
             "seconds wide (aligned on multiples of it since the epoch), each with the count "
             "of its points and the min, max and avg of those that are numbers; at most %d "
             "buckets. Without it, the raw points (at most limit, default %d)"
             % (ranges.MAX_BUCKETS, ranges.DEFAULT_RANGE_LIMIT),
             schema={"type": "integer", "minimum": 1}),
        dict(query, name="key", description="with from: only these keys (dotted paths, each "
             "covering its sub-keys; repeated or comma-separated). A restricted key reads only "
             "the keys of its scope's read list, and by default all of those",
             schema={"type": "array", "items": {"type": "string"}}, **list_style),
    ]
    range_devices = dict(query, name="device", description="with from: only these devices "
                         "(repeated or comma-separated, at most %d; default: every device the "
                         "key may see, if they are at most that many)" % ranges.MAX_DEVICES,
                         schema={"type": "array", "items": {"type": "string"}}, **list_style)
    data_ok = _ok("points, oldest first; with from, a DataRange",
                  {"oneOf": [{"type": "array", "items": _ref("DataPoint")},
                             _ref("DataRange")]})
    ota_params = [
        dict(query, name="mode", schema={"type": "string", "enum": ["push", "pull"]},
             description="push: OTA.Begin/Write/End; pull: OTA.Update with a one-time link"),
        dict(query, name="auto_commit", description="commit once the device is back",
             schema={"type": "string", "enum": list(AUTO_COMMIT_VALUES)}),
        dict(query, name="commit_timeout", description="pull: seconds to commit in",
             schema={"type": "integer", "minimum": 0, "maximum": MAX_COMMIT_TIMEOUT}),
        dict(query, name="filename", description="the raw body's file name (.zip or .bin)",
             schema={"type": "string"}),
    ]
    binary = {"type": "string", "format": "binary"}
    queue = {
        "name": "queue", "in": "query", "required": False,
        "description": "if the device is offline, queue the call for this many seconds and "
                       "answer 202 with it (see POST /devices/{device_id}/calls) instead of 503",
        "schema": dict(seconds, maximum=config["calls.max_expires_in"]),
    }
    queued = {"description": "the device is offline: the call is queued (?queue=)",
              "headers": {"Location": {"schema": {"type": "string"}}},
              "content": {JSON: {"schema": _ref("Call")}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dashd REST API",
            "version": version,
            "description": (
                "Devices, their shadows, RPC calls to them, firmware updates, stored "
                "data and logs, and API keys. Every request "
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
                    "summary": "The devices the key may see, or those a query selects, a page "
                               "at a time if asked",
                    "parameters": [
                        where,
                        dict(query_arg, name="order", description="default created",
                             schema={"type": "string", "enum": list(device_query.ORDERS)}),
                        dict(query_arg, name="limit", description="a page of this many "
                             "(default: all); the next page's cursor is in X-Next-Cursor",
                             schema={"type": "integer", "minimum": 1, "maximum": MAX_PAGE}),
                        dict(query_arg, name="cursor", description="X-Next-Cursor of the page "
                             "before (with the same order)", schema={"type": "string"}),
                    ],
                    "responses": _responses({
                        "description": "devices",
                        "headers": {"X-Next-Cursor": {
                            "schema": {"type": "string"},
                            "description": "where the next page starts; absent on the last"}},
                        "content": {JSON: {"schema": {"type": "array",
                                                      "items": _ref("Device")}}},
                    }, "400"),
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
            "/devices/count": {
                "get": {
                    "operationId": "countDevices",
                    "summary": "How many devices the key may see (that a query selects)",
                    "parameters": [where],
                    "responses": _responses(_ok("the count", {
                        "type": "object", "required": ["count"],
                        "properties": {"count": {"type": "integer", "minimum": 0}}}), "400"),
                },
            },
            "/devices/{device_id}/calls": {
                "parameters": [device_id],
                "post": {
                    "operationId": "queueCall",
                    "summary": "Queue a call: sent when the device is online (at once if it "
                               "is), by whichever node holds it, at most once unless retry",
                    "requestBody": _body({
                        "type": "object", "additionalProperties": False,
                        "required": ["method"],
                        "properties": {
                            "method": {"type": "string", "minLength": 1,
                                       "maxLength": MAX_METHOD_LENGTH},
                            "params": {"description": "any JSON value, at most %d bytes"
                                                      % config["calls.max_params_bytes"]},
                            "expires_in": dict(seconds, maximum=config["calls.max_expires_in"],
                                               description="seconds it may wait for the device "
                                               "(default %g)"
                                               % config["calls.default_expires_in"]),
                            "expires_at": {"type": "number", "description": "or: the time "
                                           "(seconds since the epoch) it may wait until"},
                            "timeout": dict(seconds, maximum=config["rpc.max_timeout"],
                                            description="seconds the device has to answer "
                                            "once it is sent (default %g)"
                                            % config["rpc.default_timeout"]),
                            "retry": {"type": "integer", "minimum": 0,
                                      "maximum": config["calls.max_retries"],
                                      "description": "times it may be sent again after it "
                                      "timed out or was lost (default 0: never)"},
                        },
                    }, required=True),
                    "responses": dict(
                        {"202": {"description": "queued: the call (Location: /calls/ID)",
                                 "headers": {"Location": {"schema": {"type": "string"}}},
                                 "content": {JSON: {"schema": _ref("Call")}}}},
                        **{c: ERRORS[c] for c in ("400", "401", "403", "404", "413", "429",
                                                  "503")}),
                },
                "get": {
                    "operationId": "listCalls",
                    "summary": "The device's queued calls, newest first",
                    "parameters": [
                        dict(query_arg, name="state", description="only these states, "
                             "comma-separated", schema={"type": "string"}),
                        dict(query_arg, name="limit", description="a page of this many "
                             "(default %d); the next page's cursor is in X-Next-Cursor"
                             % calls_app.DEFAULT_LIST,
                             schema={"type": "integer", "minimum": 1,
                                     "maximum": calls_app.MAX_LIST}),
                        dict(query_arg, name="cursor", description="X-Next-Cursor of the page "
                             "before", schema={"type": "string", "pattern": "^[0-9]+$"}),
                    ],
                    "responses": _responses({
                        "description": "calls",
                        "headers": {"X-Next-Cursor": {"schema": {"type": "string"}}},
                        "content": {JSON: {"schema": {"type": "array",
                                                      "items": _ref("Call")}}},
                    }, "400", "404"),
                },
            },
            "/calls/{call_id}": {
                "parameters": [call_id],
                "get": {
                    "operationId": "getCall",
                    "summary": "A queued call: its state, times, attempts and result",
                    "responses": _responses(_ok("the call", _ref("Call")), "404"),
                },
                "delete": {
                    "operationId": "cancelCall",
                    "summary": "Cancel a queued call; one already sent or ended is a 409",
                    "responses": _responses(_ok("the call, cancelled", _ref("Call")),
                                            "403", "404", "409"),
                },
            },
            "/devices/{device_id}/token": {
                "parameters": [device_id],
                "post": {
                    "operationId": "rotateDeviceToken",
                    "summary": "Give the device a new token; the old one stops working and a "
                               "device connected with it is disconnected (close code 4003)",
                    "requestBody": _body({"type": "object", "additionalProperties": False,
                                          "maxProperties": 0}),
                    "responses": _responses(_ok("the new token", {
                        "type": "object", "required": ["id", "token"],
                        "properties": {"id": {"type": "string"}, "token": {"type": "string"}},
                    }), "400", "403", "404"),
                },
            },
            "/devices/{device_id}/rpc/{method}": {
                "parameters": [device_id, method],
                "get": {
                    "operationId": "callDeviceWithoutParams",
                    "summary": "Call a method on the device, without params",
                    "parameters": [timeout, queue],
                    "responses": dict(_responses(_ok("the device's result", {}), *rpc_errors),
                                      **{"202": queued}),
                },
                "post": {
                    "operationId": "callDevice",
                    "summary": "Call a method on the device; the body is its params",
                    "parameters": [timeout, queue],
                    "requestBody": _body({"description": "the params: any JSON value"}),
                    "responses": dict(_responses(_ok("the device's result", {}),
                                                 *(rpc_errors + ("413",))),
                                      **{"202": queued}),
                },
            },
            "/devices/{device_id}/ota": {
                "parameters": [device_id],
                "get": {
                    "operationId": "getFirmwareUpdate",
                    "summary": "The status of the device's last firmware update, or null",
                    "responses": _responses(_ok("the status", {
                        "oneOf": [_ref("OtaStatus"), {"type": "null"}]}), "403", "404"),
                },
                "post": {
                    "operationId": "updateFirmware",
                    "summary": "Update the device's firmware: a Mongoose OS .zip or a .bin "
                               "image, as multipart (file) or as the raw body",
                    "parameters": ota_params,
                    "requestBody": {"required": True, "content": {
                        "multipart/form-data": {"schema": {
                            "type": "object", "required": ["file"],
                            "properties": {"file": binary}}},
                        "application/zip": {"schema": binary},
                        "application/octet-stream": {"schema": binary},
                    }},
                    "responses": dict(
                        {"202": _ok("the update started: its status", _ref("OtaStatus"))},
                        **{c: ERRORS[c] for c in ("400", "401", "403", "404", "409", "413",
                                                  "415", "503")}),
                },
            },
            "/devices/{device_id}/ota/commit": {
                "parameters": [device_id],
                "post": {
                    "operationId": "commitFirmware",
                    "summary": "OTA.Commit on a device back with new firmware",
                    "responses": _responses(_ok("the status", _ref("OtaStatus")),
                                            "403", "404", "409", "502", "503", "504"),
                },
            },
            "/firmware/{secret}": {
                "parameters": [{"name": "secret", "in": "path", "required": True,
                                "schema": {"type": "string", "minLength": 1}}],
                "get": {
                    "operationId": "downloadFirmware",
                    "summary": "A pull update's firmware, for the device: the one-time link "
                               "dashd gave it in OTA.Update is its own credential (no key)",
                    "security": [],
                    "responses": {
                        "200": {"description": "the firmware file",
                                "content": {"application/octet-stream": {"schema": binary}}},
                        "404": _error("No such download: a link works once, while its "
                                      "update runs"),
                    },
                },
            },
            "/devices/{device_id}/data": {
                "parameters": [device_id],
                "get": {
                    "operationId": "getDeviceData",
                    "summary": "The device's stored data (the reported keys in tags.save)",
                    "parameters": data_params + range_params,
                    "responses": _responses(data_ok, "400", "403", "404"),
                },
            },
            "/devices/data": {
                "get": {
                    "operationId": "getDevicesData",
                    "summary": "The stored data of every device the key may see",
                    "parameters": data_params + range_params + [range_devices],
                    "responses": _responses(data_ok, "400", "403", "404"),
                },
            },
            "/data": {
                "get": {
                    "operationId": "getData",
                    "summary": "The stored data of every device the key may see",
                    "parameters": data_params + range_params + [range_devices],
                    "responses": _responses(data_ok, "400", "403", "404"),
                },
            },
            "/logs": {
                "post": {
                    "operationId": "getLogs",
                    "summary": "Stored device logs and notifications, oldest first, from an "
                               "offset; ask again with next",
                    "requestBody": _body({
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "start": dict(OFFSET, description="offset; negative counts "
                                                              "from the end"),
                            "limit": {"type": "integer", "minimum": 1,
                                      "maximum": records.MAX_LOGS_LIMIT},
                            "device_id": {"type": "string"},
                        },
                    }),
                    "responses": _responses(_ok("a page of events", {
                        "type": "object", "required": ["events", "next"],
                        "properties": {
                            "events": {"type": "array", "items": _ref("LogEvent")},
                            "next": {"type": "integer"},
                        },
                    }), "400", "403", "404", "413"),
                },
            },
            "/audit": {
                "get": {
                    "operationId": "getAudit",
                    "summary": "The account's audit log (admin keys): every change and device "
                               "call made through the REST API, oldest first from an offset",
                    "parameters": [
                        {"name": "start", "in": "query", "required": False, "schema": OFFSET,
                         "description": "offset; negative counts from the end"},
                        {"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1,
                                    "maximum": records.MAX_AUDIT_LIMIT}},
                    ],
                    "responses": _responses(_ok("a page of entries", {
                        "type": "object", "required": ["entries", "next"],
                        "properties": {
                            "entries": {"type": "array", "items": {
                                "type": "object",
                                "required": ["offset", "timestamp", "key_id", "key_account",
                                             "method", "path", "device_id", "status", "error"],
                                "properties": {
                                    "offset": {"type": "integer"},
                                    "timestamp": {"type": "number"},
                                    "key_id": {"type": "string"},
                                    "key_account": {
                                        "type": "string",
                                        "description": "the account of the key: another one "
                                                       "for what a sharee did to a device "
                                                       "this account owns"},
                                    "method": {"type": "string"},
                                    "path": {"type": "string"},
                                    "device_id": {"type": ["string", "null"]},
                                    "status": {"type": "integer"},
                                    "error": {"type": ["string", "null"]},
                                    "detail": {
                                        "type": ["object", "null"],
                                        "description": "what the request changed, in names: "
                                                       "name [old, new] (a rename or a new "
                                                       "device), changed (the dotted shadow "
                                                       "paths it touched, never their "
                                                       "values), sharing (true)"},
                                },
                            }},
                            "next": {"type": "integer"},
                        },
                    }), "400", "403"),
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
                            "kind": {"type": "string", "enum": list(KEY_KINDS)},
                            "scope": _ref("Scope"),
                            "expires": {"type": ["number", "null"],
                                        "description": "Unix time in the future; "
                                                       "null: never"},
                        },
                    }),
                    "responses": _responses(_ok("the key and its secret", _ref("CreatedKey")),
                                            "400", "403", "413"),
                },
            },
            "/notify/ticket": {
                "post": {
                    "operationId": "notifyTicket",
                    "summary": "A ticket that opens the notification stream (WebSocket "
                               "/api/v2/notify?ticket=TICKET) as the calling key, once, within "
                               "30 s: the key stays out of the URL",
                    "requestBody": _body({"type": "object", "additionalProperties": False,
                                          "maxProperties": 0}),
                    "responses": _responses(_ok("the ticket", {
                        "type": "object", "required": ["ticket", "expires", "url"],
                        "properties": {
                            "ticket": {"type": "string"},
                            "expires": {"type": "number",
                                        "description": "Unix time after which it opens "
                                                       "nothing"},
                            "url": {"type": "string",
                                    "description": "the stream's path with the ticket"},
                        },
                    }), "400"),
                },
            },
            "/whoami": {
                "get": {
                    "operationId": "whoami",
                    "summary": "The calling key: its ID, kind, account and scope, and whether "
                               "its account is the operator account",
                    "responses": _responses(_ok("the key", _ref("WhoAmI"))),
                },
            },
            "/session": {
                "post": {
                    "operationId": "createSession",
                    "summary": "Keep a browser signed in: a session of the calling key (sent in "
                               "the Authorization header), as two SameSite=Strict cookies: "
                               "dashd_session (HttpOnly) and dashd_csrf. A request with the "
                               "session cookie and no Authorization header acts as the key, and "
                               "must send the dashd_csrf token in the X-Dashd-CSRF header (else "
                               "403). The session ends when it expires, on DELETE, or when the "
                               "key is revoked",
                    "requestBody": _body({
                        "type": "object", "additionalProperties": False,
                        "properties": {"hours": {
                            "type": "number", "exclusiveMinimum": 0,
                            "maximum": sessions.MAX_HOURS,
                            "description": "how long (default %d; never beyond the key's "
                                           "expiry)" % sessions.DEFAULT_HOURS}},
                    }),
                    "responses": _responses(_ok("the session (its cookies are set)", {
                        "type": "object", "required": ["key_id", "expires", "csrf"],
                        "properties": {"key_id": {"type": "string"},
                                       "expires": {"type": "number"},
                                       "csrf": {"type": "string",
                                                "description": "the X-Dashd-CSRF token"}},
                    }), "400", "403"),
                },
                "get": {
                    "operationId": "getSession",
                    "summary": "The session the dashd_session cookie names (with the "
                               "X-Dashd-CSRF header)",
                    "responses": _responses(_ok("the session", {
                        "type": "object", "required": ["key_id", "expires"],
                        "properties": {"key_id": {"type": "string"},
                                       "expires": {"type": "number"}},
                    }), "403"),
                },
                "delete": {
                    "operationId": "endSession",
                    "summary": "Sign out: end the session the cookie names (with its "
                               "X-Dashd-CSRF header) and clear the cookies",
                    "security": [],
                    "responses": {"200": _ok("whether a session ended", {
                        "type": "object", "required": ["ended"],
                        "properties": {"ended": {"type": "boolean"}}}),
                        "403": ERRORS["403"]},
                },
            },
            "/accounts": {
                "get": {
                    "operationId": "listAccounts",
                    "summary": "Every account (admin keys of the operator account only)",
                    "responses": _responses(_ok("accounts", {"type": "array",
                                                             "items": _ref("Account")}),
                                            "403"),
                },
                "post": {
                    "operationId": "createAccount",
                    "summary": "Create an account; the reply holds its first admin key, once. "
                               "Account names are unique whatever their case (409)",
                    "requestBody": _body({
                        "type": "object", "additionalProperties": False,
                        "required": ["name"], "properties": {"name": NAME},
                    }, required=True),
                    "responses": _responses(_ok("the account and its admin key", {
                        "allOf": [_ref("Account"), {
                            "type": "object", "required": ["admin_key"],
                            "properties": {"admin_key": _ref("CreatedKey")},
                        }],
                    }), "400", "403", "409", "413"),
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
                        "sections": {
                            "description": "each section's own version and last change",
                            "type": "object",
                            "additionalProperties": {
                                "type": "object", "required": ["version", "timestamp"],
                                "properties": {"version": {"type": "integer", "minimum": 0},
                                               "timestamp": {"type": ["number", "null"]}},
                            },
                        },
                        "metadata": {
                            "description": "reported's shape, with the time each key was "
                                           "last reported",
                            "type": "object",
                            "properties": {"reported": {"type": "object"}},
                        },
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
                        "versions": {
                            "type": ["object", "null"],
                            "description": "the version each section must be at, e.g. "
                                           "{\"desired\": 3}: a condition on what the change "
                                           "changes, whatever else changed meanwhile; a stale "
                                           "one gets 409",
                            "additionalProperties": False,
                            "properties": {name: {"type": ["integer", "null"], "minimum": 0}
                                           for name in ("desired", "reported", "tags")},
                        },
                    },
                },
                "Device": {
                    "description": "a restricted key sees only id, name, online, last_seen "
                                   "and the shadow's readable keys",
                    "type": "object",
                    "required": ["id", "name", "online", "created", "last_seen", "info",
                                 "shared_with", "shadow"],
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "account_id": {"type": "string",
                                       "description": "the account that owns it"},
                        "online": {"type": "boolean"},
                        "created": {"type": "number"},
                        "last_seen": {"type": ["number", "null"]},
                        "info": {"type": "object"},
                        "shared_with": {"type": "string"},
                        "share_scopes": {"type": "object",
                                         "description": "the scopes of the shares that have "
                                                        "one, by account ID",
                                         "additionalProperties": SHARE_SCOPE},
                        "shadow": _ref("Shadow"),
                    },
                },
                "Call": {
                    "description": "a queued call; states: %s" % ", ".join(calls.STATES),
                    "type": "object",
                    "required": ["id", "device_id", "method", "params", "state", "created",
                                 "expires", "timeout", "retry", "times", "attempts", "key_id"],
                    "properties": {
                        "id": {"type": "string"},
                        "device_id": {"type": "string"},
                        "method": {"type": "string"},
                        "params": {},
                        "state": {"type": "string", "enum": list(calls.STATES)},
                        "created": {"type": "number"},
                        "expires": {"type": "number"},
                        "timeout": {"type": "number"},
                        "retry": {"type": "integer"},
                        "times": {"type": "object", "description": "when it reached each "
                                  "state", "additionalProperties": {"type": "number"}},
                        "attempts": {"type": "array", "items": {
                            "type": "object", "required": ["sent"],
                            "properties": {"sent": {"type": "number"},
                                           "ended": {"type": "number"},
                                           "state": {"type": "string"},
                                           "error": _ref("CallError")}}},
                        "result": {"description": "succeeded: the device's result"},
                        "error": _ref("CallError"),
                        "key_id": {"type": "string", "description": "the key that made it"},
                    },
                },
                "CallError": {
                    "description": "failed: the device's JSON-RPC code and message; "
                                   "timed_out 504, lost 503, with what happened",
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
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
                    "required": ["id", "name", "kind", "account_id", "created", "expires",
                                 "scope"],
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "kind": {"type": "string", "enum": list(KEY_KINDS)},
                        "account_id": {"type": "string"},
                        "created": {"type": "number"},
                        "expires": {"type": ["number", "null"]},
                        "scope": {"oneOf": [_ref("Scope"), {"type": "null"}]},
                    },
                },
                "Scope": {
                    "description": "a restricted key's devices and what it may do with each",
                    "type": "object",
                    "required": ["devices"],
                    "additionalProperties": False,
                    "properties": {"devices": {
                        "type": "object",
                        "minProperties": 1,
                        "maxProperties": MAX_SCOPE_DEVICES,
                        "additionalProperties": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "read": dict(SCOPE_ENTRIES,
                                             description="shadow keys it may read (dotted)"),
                                "write": dict(SCOPE_ENTRIES,
                                              description="desired keys it may change"),
                                "rpc": dict(SCOPE_ENTRIES,
                                            description="methods it may call; * matches "
                                                        "any run of characters"),
                            },
                        },
                    }},
                },
                "Account": {
                    "type": "object",
                    "required": ["id", "name", "created", "operator"],
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "created": {"type": "number"},
                        "operator": {"type": "boolean"},
                    },
                },
                "OtaStatus": {
                    "type": "object",
                    "required": ["id", "device_id", "mode", "state", "file", "kind", "size",
                                 "sent", "percent", "auto_commit", "started", "updated"],
                    "properties": {
                        "id": {"type": "string"},
                        "device_id": {"type": "string"},
                        "mode": {"enum": ["push", "pull"]},
                        "state": {"enum": ["uploading", "downloading", "rebooting",
                                           "uncommitted", "committed", "failed"]},
                        "file": {"type": "string"},
                        "kind": {"enum": ["zip", "bin"]},
                        "size": {"type": "integer"},
                        "sent": {"type": "integer"},
                        "percent": {"type": "integer", "minimum": 0, "maximum": 100},
                        "auto_commit": {"type": "boolean"},
                        "commit_timeout": {"type": "integer"},
                        "manifest": {"type": "object"},
                        "fw_id_before": {"type": ["string", "null"]},
                        "fw_id": {"type": "string"},
                        "fw_version": {"type": "string"},
                        "started": {"type": "number"},
                        "updated": {"type": "number"},
                        "reason": {"type": "string"},
                        "note": {"type": "string"},
                        "job": {"type": "string", "description": "the fleet job it is for"},
                        "device_state": {
                            "type": "object",
                            "description": "what the device last said of its own update "
                                           "(Dash.OTAState)",
                            "properties": {"state": {}, "msg": {}, "t": {"type": "number"}},
                        },
                    },
                },
                "DataPoint": {
                    "type": "object",
                    "required": ["device_id", "timestamp", "key", "value"],
                    "properties": {
                        "device_id": {"type": "string"},
                        "timestamp": {"type": "number"},
                        "key": {"type": "string"},
                        "value": {},
                    },
                },
                "DataRange": {
                    "type": "object",
                    "description": "stored data over a time range, a series a device and key "
                                   "(columns: the i-th of each list belong together)",
                    "required": ["from", "to", "bucket", "series"],
                    "properties": {
                        "from": {"type": "number"},
                        "to": {"type": "number"},
                        "bucket": {"type": ["integer", "null"]},
                        "next": {"type": ["number", "null"],
                                 "description": "raw points: where to go on (as from), every "
                                                "point before it given; null: no more"},
                        "series": {"type": "array", "items": {
                            "type": "object",
                            "required": ["device_id", "key", "t"],
                            "properties": {
                                "device_id": {"type": "string"},
                                "key": {"type": "string"},
                                "t": {"type": "array", "items": {"type": "number"},
                                      "description": "the points' times, or the buckets' "
                                                     "starts"},
                                "value": {"type": "array", "description": "raw points"},
                                "count": {"type": "array", "items": {"type": "integer"}},
                                "min": {"type": "array", "items": {"type": ["number", "null"]}},
                                "max": {"type": "array", "items": {"type": ["number", "null"]}},
                                "avg": {"type": "array", "items": {"type": ["number", "null"]},
                                        "description": "null: no number in the bucket"},
                            },
                        }},
                    },
                },
                "LogEvent": {
                    "type": "object",
                    "required": ["offset", "id", "timestamp", "name", "data"],
                    "properties": {
                        "offset": {"type": "integer"},
                        "id": {"type": "string", "description": "the device"},
                        "timestamp": {"type": "number"},
                        "name": {"type": "string"},
                        "data": {},
                    },
                },
                "WhoAmI": {
                    "allOf": [_ref("Key"), {
                        "type": "object",
                        "required": ["operator", "account_name"],
                        "properties": {
                            "operator": {
                                "type": "boolean",
                                "description": "the key's account is the operator account, "
                                               "whose admin keys manage accounts",
                            },
                            "account_name": {"type": ["string", "null"]},
                        },
                    }],
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


# The firmware library and fleet jobs (dashd.api.openapi_fleet), alarms and
# webhooks (dashd.api.openapi_alarms) describe themselves.
_document = document


def document(config: Config, version: str) -> dict[str, Any]:  # noqa: F811
    from dashd.api import openapi_fleet
    from dashd.api.openapi_alarms import add

    doc = openapi_fleet.extend(_document(config, version), config)
    add(doc, config)
    return doc
