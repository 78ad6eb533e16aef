"""Alarms and webhooks (L{dashd.app.alarms}, L{dashd.app.webhooks}):

- ``GET``/``POST /api/v2/alarm-rules``, ``GET``/``POST``/``DELETE
  /api/v2/alarm-rules/:id``: rules (admin keys change them);
- ``GET /api/v2/alarms?state=&severity=&device=&acknowledged=&limit=&cursor=``
  (newest first, ``X-Next-Cursor``), ``GET /api/v2/alarms/count`` (active
  by severity), ``GET /api/v2/alarms/:id``, ``POST
  /api/v2/alarms/:id/acknowledge`` (``{"note"}``), ``POST
  /api/v2/alarms/:id/clear``;
- ``GET``/``POST /api/v2/webhooks``, ``GET``/``POST``/``DELETE
  /api/v2/webhooks/:id``, ``POST /api/v2/webhooks/:id/test``.
"""

from __future__ import annotations

from typing import Any

from dashd.api.base import ApiBase, app, int_arg, object_body, text_arg
from dashd.app.webhooks import webhook_view
from dashd.domain.alarms import alarm_view, rule_view
from dashd.domain.errors import Invalid
from dashd.domain.model import UNSET

_RULE_FIELDS = {"name", "where", "condition", "severity", "enabled", "webhooks", "account_id"}
_HOOK_FIELDS = {"name", "url", "events", "enabled", "rotate_secret"}


def _bool_arg(request: Any, name: str) -> bool | None:
    value = text_arg(request, name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise Invalid("%s must be true or false" % name, name)
    return value == "true"


class AlarmRoutes(ApiBase):
    # Rules

    @app.route("/api/v2/alarm-rules", methods=["GET"])
    async def list_alarm_rules(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        rules = await self.application.alarms.list_rules(key)
        return self.json(request, [rule_view(r) for r in rules])

    @app.route("/api/v2/alarm-rules", methods=["POST"])
    async def create_alarm_rule(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        body = object_body(request, _RULE_FIELDS)
        rule = await self.application.alarms.put_rule(key, None, body,
                                                      body.pop("account_id", UNSET))
        request.setResponseCode(201)
        return self.json(request, rule_view(rule))

    @app.route("/api/v2/alarm-rules/<rule_id>", methods=["GET"])
    async def get_alarm_rule(self, request: Any, rule_id: str) -> bytes:
        key = await self.authenticate(request)
        return self.json(request, rule_view(await self.application.alarms.get_rule(key,
                                                                                   rule_id)))

    @app.route("/api/v2/alarm-rules/<rule_id>", methods=["POST"])
    async def change_alarm_rule(self, request: Any, rule_id: str) -> bytes:
        key = await self.authenticate(request)
        body = object_body(request, _RULE_FIELDS - {"account_id"})
        rule = await self.application.alarms.put_rule(key, rule_id, body)
        return self.json(request, rule_view(rule))

    @app.route("/api/v2/alarm-rules/<rule_id>", methods=["DELETE"])
    async def delete_alarm_rule(self, request: Any, rule_id: str) -> bytes:
        key = await self.authenticate(request)
        await self.application.alarms.delete_rule(key, rule_id)
        return self.json(request, {"deleted": rule_id})

    # Alarms

    @app.route("/api/v2/alarms", methods=["GET"])
    async def list_alarms(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        found, following = await self.application.alarms.list(
            key, text_arg(request, "state"), text_arg(request, "severity"),
            text_arg(request, "device"), _bool_arg(request, "acknowledged"),
            int_arg(request, "limit", 50), text_arg(request, "cursor"))
        if following is not None:
            request.setHeader(b"X-Next-Cursor", following.encode("ascii"))
        names = await self.application.alarms.rule_names(key)
        return self.json(request, [self._alarm_view(a, names) for a in found])

    def _alarm_view(self, alarm: Any, names: dict[str, str]) -> dict[str, Any]:
        view = alarm_view(alarm)
        if alarm.rule_id in names:
            view["rule"] = names[alarm.rule_id]
        return view

    @app.route("/api/v2/alarms/count", methods=["GET"])
    async def count_alarms(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        counts = await self.application.alarms.counts(key)
        return self.json(request, {"active": sum(counts.values()), "by_severity": counts})

    @app.route("/api/v2/alarms/<alarm_id>", methods=["GET"])
    async def get_alarm(self, request: Any, alarm_id: str) -> bytes:
        key = await self.authenticate(request)
        alarm = await self.application.alarms.get(key, alarm_id)
        return self.json(request, self._alarm_view(
            alarm, await self.application.alarms.rule_names(key)))

    @app.route("/api/v2/alarms/<alarm_id>/acknowledge", methods=["POST"])
    async def acknowledge_alarm(self, request: Any, alarm_id: str) -> bytes:
        key = await self.authenticate(request)
        body = object_body(request, {"note"})
        alarm = await self.application.alarms.acknowledge(key, alarm_id,
                                                          body.get("note", UNSET))
        request.dashd_device_id = alarm.device_id
        return self.json(request, alarm_view(alarm))

    @app.route("/api/v2/alarms/<alarm_id>/clear", methods=["POST"])
    async def clear_alarm(self, request: Any, alarm_id: str) -> bytes:
        key = await self.authenticate(request)
        object_body(request, set())
        alarm = await self.application.alarms.clear(key, alarm_id)
        request.dashd_device_id = alarm.device_id
        return self.json(request, alarm_view(alarm))

    # Webhooks

    async def _hook_view(self, hook: dict[str, Any], secret: bool = False) -> dict[str, Any]:
        return webhook_view(hook, await self.application.webhooks.stats(hook["id"]), secret)

    @app.route("/api/v2/webhooks", methods=["GET"])
    async def list_webhooks(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        hooks = await self.application.webhooks.list(key)
        return self.json(request, [await self._hook_view(h) for h in hooks])

    @app.route("/api/v2/webhooks", methods=["POST"])
    async def create_webhook(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        body = object_body(request, _HOOK_FIELDS - {"rotate_secret"})
        hook = await self.application.webhooks.put(key, None, body)
        request.setResponseCode(201)
        # The secret is shown here, and when rotated, only.
        return self.json(request, await self._hook_view(hook, secret=True))

    @app.route("/api/v2/webhooks/<hook_id>", methods=["GET"])
    async def get_webhook(self, request: Any, hook_id: str) -> bytes:
        key = await self.authenticate(request)
        return self.json(request, await self._hook_view(await self.application.webhooks.get(
            key, hook_id)))

    @app.route("/api/v2/webhooks/<hook_id>", methods=["POST"])
    async def change_webhook(self, request: Any, hook_id: str) -> bytes:
        key = await self.authenticate(request)
        body = object_body(request, _HOOK_FIELDS)
        hook = await self.application.webhooks.put(key, hook_id, body)
        return self.json(request, await self._hook_view(hook, secret=body.get("rotate_secret")
                                                        is True))

    @app.route("/api/v2/webhooks/<hook_id>", methods=["DELETE"])
    async def delete_webhook(self, request: Any, hook_id: str) -> bytes:
        key = await self.authenticate(request)
        await self.application.webhooks.delete(key, hook_id)
        return self.json(request, {"deleted": hook_id})

    @app.route("/api/v2/webhooks/<hook_id>/test", methods=["POST"])
    async def test_webhook(self, request: Any, hook_id: str) -> bytes:
        key = await self.authenticate(request)
        object_body(request, set())
        delivery = await self.application.webhooks.test(key, hook_id)
        request.setResponseCode(202)
        return self.json(request, {"delivery": delivery})
