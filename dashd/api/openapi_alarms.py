"""The OpenAPI description of alarms and webhooks (L{dashd.api.alarms}),
added to the document of L{dashd.api.openapi}."""

from __future__ import annotations

from typing import Any

from dashd.api.openapi import ERRORS, JSON, _body, _ok, _ref, _responses
from dashd.app import alarms as alarms_app
from dashd.app.webhooks import EVENT_KINDS, MAX_NAME as MAX_HOOK_NAME, MAX_URL
from dashd.config import Config
from dashd.domain import alarms as a
from dashd.domain import query as device_query


def _created(description: str, schema: dict[str, Any], *codes: str) -> dict[str, Any]:
    out = {"201": _ok(description, schema)}
    for code in ("401",) + codes:
        out[code] = ERRORS[code]
    return out


def _linked(responses: dict[str, Any], parameter: str, operations: tuple[str, ...]
            ) -> dict[str, Any]:
    """The 201's links to the operations on what it made."""
    responses["201"]["links"] = {
        op[0].upper() + op[1:]: {"operationId": op,
                                 "parameters": {parameter: "$response.body#/id"}}
        for op in operations}
    return responses


NUMBER = {"type": "number"}
SECONDS = {"type": "number", "minimum": 0, "maximum": a.MAX_SECONDS}
KEY = {"type": "string", "minLength": 1, "maxLength": 256,
       "description": "a dotted path of the reported state, e.g. env.temp"}
def _kind(kind: str, required: list[str], **fields: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False,
            "required": ["kind"] + required,
            "properties": dict(fields, kind={"type": "string", "const": kind})}


CONDITION = {
    "description": "what raises the alarm (kind): threshold (key above/below a number; "
                   "cleared at clear, for hysteresis; raised once it held for `for` "
                   "seconds), stale (key not reported for seconds), offline (for more than "
                   "seconds), ota_failed (cleared by a committed update), log (a Dash.Log "
                   "line matching pattern, a regular expression; cleared by hand or after "
                   "clear_after seconds), call_failures (the share of calls failed in the "
                   "last window seconds, of at least min_calls, reaches rate; cleared below "
                   "clear_rate)",
    "oneOf": [
        _kind("threshold", ["key", "above"], key=KEY, above=NUMBER, clear=NUMBER,
              **{"for": SECONDS}),
        _kind("threshold", ["key", "below"], key=KEY, below=NUMBER, clear=NUMBER,
              **{"for": SECONDS}),
        _kind("stale", ["key", "seconds"], key=KEY,
              seconds={"type": "number", "minimum": 1, "maximum": a.MAX_SECONDS}),
        _kind("offline", ["seconds"], seconds=SECONDS),
        _kind("ota_failed", []),
        _kind("log", ["pattern"], pattern={"type": "string", "minLength": 1,
                                           "maxLength": a.MAX_PATTERN},
              clear_after={"type": "number", "minimum": 1, "maximum": a.MAX_SECONDS}),
        _kind("call_failures", ["rate"],
              rate={"type": "number", "exclusiveMinimum": 0, "maximum": 1},
              clear_rate={"type": "number", "minimum": 0, "maximum": 1},
              window={"type": "number", "minimum": 1, "maximum": a.MAX_SECONDS},
              min_calls={"type": "integer", "minimum": 1, "maximum": 10000}),
    ],
}
RULE_FIELDS = {
    "name": {"type": "string", "minLength": 1, "maxLength": a.MAX_NAME, "pattern": r"\S"},
    "where": {"type": ["string", "null"], "maxLength": device_query.MAX_QUERY_LENGTH,
              "description": "a device query (as GET /devices?where=) selecting the devices "
                             "the rule covers, evaluated live; none: every device the account "
                             "sees"},
    "condition": CONDITION,
    "severity": {"type": "string", "enum": list(a.SEVERITIES)},
    "enabled": {"type": "boolean"},
    "webhooks": {"type": "array", "maxItems": a.MAX_WEBHOOKS,
                 "items": {"type": "string", "minLength": 1},
                 "description": "webhook IDs the rule's alarms are sent to (besides those "
                                "that chose alarm events)"},
}
HOOK_FIELDS = {
    "name": {"type": "string", "maxLength": MAX_HOOK_NAME},
    "url": {"type": "string", "minLength": 1, "maxLength": MAX_URL,
            "pattern": "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/.*)?$",
            "description": "https:// (http:// only where webhooks.allow_http); a private, "
                           "loopback or reserved address is refused unless "
                           "webhooks.allowed_networks includes it"},
    "events": {"type": "array", "items": {"type": "string", "enum": list(EVENT_KINDS)},
               "description": "the kinds of events sent (default: alarm.raised, "
                              "alarm.cleared)"},
    "enabled": {"type": "boolean"},
}


def schemas() -> dict[str, Any]:
    return {
        "AlarmRule": {
            "type": "object",
            "required": ["id", "name", "where", "condition", "severity", "enabled",
                         "webhooks", "account_id", "created", "updated"],
            "properties": dict(RULE_FIELDS, id={"type": "string"},
                               account_id={"type": "string"}, created=NUMBER, updated=NUMBER,
                               name={"type": "string"}),
        },
        "Alarm": {
            "type": "object",
            "description": "one (rule, device)'s alarm: active or cleared, acknowledged or "
                           "not",
            "required": ["id", "rule_id", "device_id", "account_id", "severity", "state",
                         "acknowledged", "raised", "message", "details"],
            "properties": {
                "id": {"type": "string"}, "rule_id": {"type": "string"},
                "device_id": {"type": "string"}, "account_id": {"type": "string"},
                "severity": {"type": "string", "enum": list(a.SEVERITIES)},
                "state": {"type": "string", "enum": list(a.STATES)},
                "acknowledged": {"type": "boolean"}, "raised": NUMBER,
                "message": {"type": "string"},
                "rule": {"type": "string", "description": "the rule's name"},
                "details": {"type": "object", "description": "the value, line or rate that "
                                                             "raised or cleared it"},
                "cleared": {"type": ["number", "null"]},
                "cleared_by": {"type": ["string", "null"],
                               "description": "condition, the key that cleared it, rule "
                                              "deleted, rule changed"},
                "acknowledged_at": {"type": ["number", "null"]},
                "acknowledged_by": {"type": ["string", "null"]},
                "note": {"type": ["string", "null"]},
            },
        },
        "Webhook": {
            "type": "object",
            "required": ["id", "account_id", "name", "url", "events", "enabled", "created",
                         "updated"],
            "properties": dict(
                HOOK_FIELDS, id={"type": "string"}, account_id={"type": "string"},
                created=NUMBER, updated=NUMBER,
                secret={"type": "string", "description": "the HMAC-SHA256 key of "
                        "X-Dashd-Signature: shown when the webhook is made and when the "
                        "secret is rotated, only"},
                deliveries={
                    "type": "object",
                    "description": "its deliveries (in a cluster, every node's): waiting, "
                                   "dropped from a full backlog, delivered, given up, and "
                                   "the last ones, newest first",
                    "properties": {
                        "partial": {"type": "boolean", "description": "present (true) when "
                                    "only this node's could be read (Redis away)"},
                        "backlog": {"type": "integer"}, "dropped": {"type": "integer"},
                        "delivered": {"type": "integer"}, "failed": {"type": "integer"},
                        "last": {"type": "array", "items": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"}, "kind": {"type": "string"},
                                "t": NUMBER, "attempt": {"type": "integer"},
                                "status": {"type": ["integer", "null"]},
                                "error": {"type": ["string", "null"]}, "ms": NUMBER}}},
                    },
                }),
        },
    }


def paths(config: Config) -> dict[str, Any]:
    rule_id = {"name": "rule_id", "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1}}
    alarm_id = {"name": "alarm_id", "in": "path", "required": True,
                "schema": {"type": "string", "minLength": 1}}
    hook_id = {"name": "hook_id", "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1}}
    q = {"in": "query", "required": False}
    rule_body = {"type": "object", "additionalProperties": False, "properties": RULE_FIELDS}
    hook_body = {"type": "object", "additionalProperties": False, "properties": HOOK_FIELDS}
    empty = _body({"type": "object", "additionalProperties": False, "maxProperties": 0})
    return {
        "/alarm-rules": {
            "get": {
                "operationId": "listAlarmRules",
                "summary": "The account's alarm rules",
                "responses": _responses(_ok("rules", {"type": "array",
                                                      "items": _ref("AlarmRule")}), "403"),
            },
            "post": {
                "operationId": "createAlarmRule",
                "summary": "Make an alarm rule (admin keys): name, where, condition and "
                           "severity; at most %d an account"
                           % config["alarms.max_rules_per_account"],
                "requestBody": _body(dict(
                    rule_body, required=["name", "condition", "severity"],
                    properties=dict(RULE_FIELDS, account_id={
                        "type": "string", "description": "dashctl only: the account"})),
                    required=True),
                "responses": _linked(_created("the rule", _ref("AlarmRule"), "400", "403",
                                              "429"), "rule_id",
                                     ("getAlarmRule", "changeAlarmRule", "deleteAlarmRule")),
            },
        },
        "/alarm-rules/{rule_id}": {
            "parameters": [rule_id],
            "get": {
                "operationId": "getAlarmRule", "summary": "An alarm rule",
                "responses": _responses(_ok("the rule", _ref("AlarmRule")), "403", "404"),
            },
            "post": {
                "operationId": "changeAlarmRule",
                "summary": "Change an alarm rule (the fields given); a changed condition or "
                           "severity clears the rule's active alarms",
                "requestBody": _body(rule_body),
                "responses": _responses(_ok("the rule", _ref("AlarmRule")), "400", "403",
                                        "404"),
            },
            "delete": {
                "operationId": "deleteAlarmRule",
                "summary": "Delete an alarm rule; its active alarms are cleared (and kept)",
                "responses": _responses(_ok("deleted", {
                    "type": "object", "properties": {"deleted": {"type": "string"}}}),
                    "403", "404"),
            },
        },
        "/alarms": {
            "get": {
                "operationId": "listAlarms",
                "summary": "Alarms, newest first, of the devices the key sees",
                "parameters": [
                    dict(q, name="state", schema={"type": "string", "enum": list(a.STATES)}),
                    dict(q, name="severity", description="severities, comma-separated",
                         schema={"type": "string"}),
                    dict(q, name="device", description="a device's only (none for a device "
                         "the key does not see)",
                         schema={"type": "string", "minLength": 1}),
                    dict(q, name="acknowledged", schema={"type": "string",
                                                         "enum": ["true", "false"]}),
                    dict(q, name="limit", description="a page of this many (default 50); "
                         "the next page's cursor is in X-Next-Cursor",
                         schema={"type": "integer", "minimum": 1,
                                 "maximum": alarms_app.MAX_PAGE}),
                    dict(q, name="cursor", schema={"type": "string", "pattern": "^[0-9]+$"}),
                ],
                "responses": _responses({
                    "description": "alarms",
                    "headers": {"X-Next-Cursor": {"schema": {"type": "string"}}},
                    "content": {JSON: {"schema": {"type": "array", "items": _ref("Alarm")}}},
                }, "400"),
            },
        },
        "/alarms/count": {
            "get": {
                "operationId": "countAlarms",
                "summary": "Active alarms the key sees, by severity",
                "responses": _responses(_ok("counts", {
                    "type": "object", "required": ["active", "by_severity"],
                    "properties": {"active": {"type": "integer", "minimum": 0},
                                   "by_severity": {"type": "object", "additionalProperties":
                                                   {"type": "integer"}}}})),
            },
        },
        "/alarms/{alarm_id}": {
            "parameters": [alarm_id],
            "get": {
                "operationId": "getAlarm", "summary": "An alarm",
                "responses": _responses(_ok("the alarm", _ref("Alarm")), "404"),
            },
        },
        "/alarms/{alarm_id}/acknowledge": {
            "parameters": [alarm_id],
            "post": {
                "operationId": "acknowledgeAlarm",
                "summary": "Acknowledge an alarm, with a note (once: later ones change "
                           "nothing)",
                "requestBody": _body({"type": "object", "additionalProperties": False,
                                      "properties": {"note": {"type": ["string", "null"],
                                                              "maxLength": a.MAX_NOTE}}}),
                "responses": _responses(_ok("the alarm", _ref("Alarm")), "400", "403",
                                        "404"),
            },
        },
        "/alarms/{alarm_id}/clear": {
            "parameters": [alarm_id],
            "post": {
                "operationId": "clearAlarm",
                "summary": "Clear an alarm by hand (the condition is then looked at afresh)",
                "requestBody": empty,
                "responses": _responses(_ok("the alarm", _ref("Alarm")), "400", "403",
                                        "404"),
            },
        },
        "/webhooks": {
            "get": {
                "operationId": "listWebhooks",
                "summary": "The account's webhooks (admin keys), with their deliveries",
                "responses": _responses(_ok("webhooks", {"type": "array",
                                                         "items": _ref("Webhook")}), "403"),
            },
            "post": {
                "operationId": "createWebhook",
                "summary": "Make a webhook: each delivery is a signed JSON POST (README, "
                           "\"Webhooks\"); the answer holds its secret",
                "requestBody": _body(dict(hook_body, required=["url"]), required=True),
                "responses": _linked(_created("the webhook, with its secret",
                                              _ref("Webhook"), "400", "403", "429"),
                                     "hook_id", ("getWebhook", "changeWebhook",
                                                 "testWebhook", "deleteWebhook")),
            },
        },
        "/webhooks/{hook_id}": {
            "parameters": [hook_id],
            "get": {
                "operationId": "getWebhook",
                "summary": "A webhook and its last deliveries (with their status codes)",
                "responses": _responses(_ok("the webhook", _ref("Webhook")), "403", "404"),
            },
            "post": {
                "operationId": "changeWebhook",
                "summary": "Change a webhook; rotate_secret: true makes a new secret "
                           "(in the answer)",
                "requestBody": _body(dict(hook_body, properties=dict(
                    HOOK_FIELDS, rotate_secret={"type": "boolean"}))),
                "responses": _responses(_ok("the webhook", _ref("Webhook")), "400", "403",
                                        "404"),
            },
            "delete": {
                "operationId": "deleteWebhook",
                "summary": "Delete a webhook; what waits for it is dropped",
                "responses": _responses(_ok("deleted", {
                    "type": "object", "properties": {"deleted": {"type": "string"}}}),
                    "403", "404"),
            },
        },
        "/webhooks/{hook_id}/test": {
            "parameters": [hook_id],
            "post": {
                "operationId": "testWebhook",
                "summary": "Send a test event (kind test) to the webhook",
                "requestBody": empty,
                "responses": dict({"202": _ok("queued", {
                    "type": "object", "required": ["delivery"],
                    "properties": {"delivery": {"type": "string"}}})},
                    **{c: ERRORS[c] for c in ("400", "401", "403", "404")}),
            },
        },
    }


def add(document: dict[str, Any], config: Config) -> None:
    document["paths"].update(paths(config))
    document["components"]["schemas"].update(schemas())
