"""
A device query (L{dashd.domain.query}) evaluated on one device in memory,
with the meaning the stores give it in SQL (L{dashd.store.query_sql}):
alarm rules (L{dashd.app.alarms}) select their devices with it as events
arrive, without asking the store. tests/test_alarms.py checks that both
agree on a set of devices and queries.

- values compare only with values of their own JSON type; a missing path
  matches no comparison (so C{not} is the plain complement);
- ``= null`` is true of a JSON null (and of an absent column);
- a boolean value matches a boolean of the same value, whatever the
  comparison;
- a string that starts like a version makes ``<``, ``<=``, ``>``, ``>=``
  compare versions, and a string that is not one never matches;
- ``matches``: a glob (``*`` and ``?``) over strings, case-sensitive.
"""

from __future__ import annotations

import operator
import re
from functools import lru_cache
from typing import Any, Callable

from dashd.domain import query as q
from dashd.domain.model import Device

_MISSING = object()
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


@lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _lookup(document: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(document, dict) or part not in document:
            return _MISSING
        document = document[part]
    return document


def evaluate(node: Any, device: Device, online: bool) -> bool:
    """Whether C{node} (a parsed query; None: every device) matches
    C{device}, which is C{online} or not."""
    if node is None:
        return True
    if isinstance(node, q.And):
        return all(evaluate(t, device, online) for t in node.terms)
    if isinstance(node, q.Or):
        return any(evaluate(t, device, online) for t in node.terms)
    if isinstance(node, q.Not):
        return not evaluate(node.term, device, online)
    kind = node.field.kind
    if kind == "online":
        return _online(node, online)
    if kind == "shared_with":
        return any(_column_leaf(node, account, "string") for account in device.shared_with) \
            if not isinstance(node, q.Exists) else bool(device.shared_with)
    if kind in q.COLUMNS:
        return _column_leaf(node, getattr(device, kind), q.COLUMNS[kind])
    document = device.info if kind == "info" else device.shadow
    return _document_leaf(node, _lookup(document, node.field.path))


def _online(node: Any, online: bool) -> bool:
    if isinstance(node, q.Exists):
        return True
    if isinstance(node, q.In):
        values = node.values
    elif isinstance(node, q.Compare) and node.op == "=":
        values = (node.value,)
    else:
        values = ()
    wanted = {v for v in values if isinstance(v, bool)}
    return online in wanted


def _column_leaf(node: Any, value: Any, kind: str) -> bool:
    if isinstance(node, q.Exists):
        return value is not None
    if isinstance(node, q.Matches):
        return kind == "string" and isinstance(value, str) and bool(
            _glob(node.pattern).fullmatch(value))
    if isinstance(node, q.In):
        return any(_column_leaf(q.Compare(node.field, "=", v), value, kind)
                   for v in node.values)
    wanted = node.value
    if wanted is None:
        return node.op == "=" and value is None
    if value is None:
        return False
    if node.version is not None:
        if kind != "string":
            return False
        have = q.version_key(value)
        return have is not None and _OPS[node.op](have, node.version)
    if isinstance(wanted, bool):
        return False
    if isinstance(wanted, str):
        return kind == "string" and _OPS[node.op](_bytes(value), _bytes(wanted))
    return kind == "number" and _OPS[node.op](value, wanted)


def _document_leaf(node: Any, value: Any) -> bool:
    if isinstance(node, q.Exists):
        return value is not _MISSING
    if value is _MISSING:
        return False
    if isinstance(node, q.Matches):
        return isinstance(value, str) and bool(_glob(node.pattern).fullmatch(value))
    if isinstance(node, q.In):
        return any(_document_leaf(q.Compare(node.field, "=", v), value) for v in node.values)
    wanted = node.value
    if wanted is None:
        return value is None
    if isinstance(wanted, bool):
        return isinstance(value, bool) and value == wanted
    if node.version is not None:
        if not isinstance(value, str):
            return False
        have = q.version_key(value)
        return have is not None and _OPS[node.op](have, node.version)
    if isinstance(wanted, str):
        return isinstance(value, str) and _OPS[node.op](_bytes(value), _bytes(wanted))
    return _is_number(value) and _OPS[node.op](value, wanted)


def _bytes(text: str) -> bytes:
    # The stores compare strings bytewise (UTF-8), as COLLATE "C" does.
    return text.encode("utf-8", "surrogatepass")
