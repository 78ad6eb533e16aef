"""
What the audit log (L{dashd.app.audit}) records of a REST request: every
change and every device call. Reads (``GET`` other than an RPC call, and
``POST /logs``, a query with a JSON body) are not recorded; nor are
requests that never authenticated (failed authentications are in the log).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

from twisted.web.server import Request

_DEVICE_PATH = re.compile(r"^/api/v2/devices/([^/]+)")
_NOT_DEVICES = ("data",)
# Reads that are POSTs (their query is a JSON body).
_READS = ("/api/v2/logs", "/api/v2/notify/ticket")


def entry_for(request: Request, now: float) -> dict[str, Any] | None:
    """The audit entry for a finished request, or None if it is not audited."""
    key = getattr(request, "dashd_key", None)
    if key is None:
        return None
    method = request.method.decode("latin-1")
    path = request.path.decode("utf-8", "replace")
    if not path.startswith("/api/v2/"):
        return None
    if method in ("GET", "HEAD", "OPTIONS") and "/rpc/" not in path:
        return None
    if path in _READS:
        return None
    m = _DEVICE_PATH.match(path)
    # The ID the routes used: percent-decoded (d7t6%6E is d7t6n).
    device_id = unquote(m.group(1), errors="replace") if m else None
    if device_id in _NOT_DEVICES:
        device_id = None
    # A route about something of a device's (DELETE /calls/:id) names it.
    device_id = getattr(request, "dashd_device_id", None) or device_id
    return {
        "t": now,
        "account_id": key.account_id,
        "key_id": key.id,
        "method": method,
        "path": path,
        "device_id": device_id,
        "status": request.code,
        "error": getattr(request, "dashd_error", None),
        # What the route said of it (dashd.api.auditdetail), if anything.
        "detail": getattr(request, "dashd_audit_detail", None),
    }
