"""
The device query language: one way to pick devices, used by
``GET /devices?where=...``, ``GET /devices/count``, the dashboard's device
list and (next) fleet jobs. For example::

    shadow.tags.site = "berlin" and info.fw_version < "1.4.0" and not online

What a query is made of:

- fields: ``id``, ``name``, ``online``, ``last_seen``, ``created``,
  ``account_id`` (the owner), ``shared_with`` (true of an account the
  device is shared with: ``shared_with = "acme"``), ``info.KEY...``, and
  any path of the shadow: ``shadow.reported.env.temp``,
  ``shadow.desired.led``, ``shadow.tags.site``, ``shadow.version``. A
  name that is not made of letters, digits, ``_`` and ``-`` is quoted:
  ``shadow.tags."floor 2"``.
- comparisons ``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=`` with a string,
  a number, ``true``, ``false`` or ``null``; ``FIELD in [V, ...]``;
  ``FIELD exists``; ``FIELD matches "GLOB"`` (``*`` any run of
  characters, ``?`` one: ``name matches "lab-*"`` is a prefix match);
  ``and``, ``or``, ``not`` and parentheses; ``online`` (or any field) on
  its own means ``FIELD = true``.
- values compare only with values of their own JSON type: ``temp > 20``
  never matches a temperature reported as the string ``"25"``. A string
  that starts like a version (``"1.10.0"``, digits and at least one dot)
  makes ``<``, ``<=``, ``>`` and ``>=`` compare versions, number by number:
  ``"1.10.0" > "1.9.2"``; what follows the numbers (``-rc1``) is ignored,
  and a string that does not start with a version never matches.
- a field a device does not have matches no comparison, so ``!=`` (which
  is ``not =``) matches it: ``shadow.tags.site != "berlin"`` includes the
  devices without a site.
- ``last_seen`` and ``created`` are seconds since the epoch.

Only what the key may see is ever matched (L{check_access}): a read-only
or admin key queries everything of the devices it sees; a restricted key
only ``id``, ``name``, ``online``, ``last_seen`` and the ``desired`` and
``reported`` keys its scope lets it read on each device (elsewhere the
field is as absent), so that it cannot probe what it may not read.

Parsing is Lark's (LALR), so errors say where and what was expected
(L{QueryError}, a 400 for the REST API). Stores turn the tree into SQL
(L{dashd.store.query_sql}).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Union

from lark import Lark, Token, Transformer, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput
from lark import UnexpectedToken
from lark.exceptions import VisitError

from dashd.domain.errors import Invalid

MAX_QUERY_LENGTH = 1024
MAX_IN_VALUES = 1000
MAX_DEPTH = 32
MAX_PATH_SEGMENTS = 16
MAX_SEGMENT_LENGTH = 128

# The fields that are columns of their own, with the JSON type of their value.
COLUMNS = {"id": "string", "name": "string", "account_id": "string",
           "created": "number", "last_seen": "number"}
# The info keys the stores index (they change when firmware does), beside
# every path under shadow.tags (changed by people, rarely).
INDEXED_INFO = ("app", "arch", "fw_version", "fw_id")
SHADOW_SECTIONS = ("desired", "reported", "tags")

GRAMMAR = r"""
?start: or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: _NOT not_expr -> negation
         | atom
?atom: "(" or_expr ")"
     | field OP value -> compare
     | field _IN "[" [value ("," value)*] "]" -> within
     | field _EXISTS -> exists
     | field _MATCHES STRING -> matches
     | field -> truth
field: NAME ("." segment)*
?segment: NAME | STRING
?value: STRING -> string
      | NUMBER -> number
      | _TRUE -> true
      | _FALSE -> false
      | _NULL -> null
OP: "!=" | "<=" | ">=" | "=" | "<" | ">"
_OR: /or\b/i
_AND: /and\b/i
_NOT: /not\b/i
_IN: /in\b/i
_EXISTS: /exists\b/i
_MATCHES: /matches\b/i
_TRUE: /true\b/i
_FALSE: /false\b/i
_NULL: /null\b/i
NAME: /(?!(?:or|and|not|in|exists|matches|true|false|null)\b)[A-Za-z_][A-Za-z0-9_-]*/i
STRING: /"(?:[^"\\\x00-\x1f]|\\["\\\/bfnrt]|\\u[0-9a-fA-F]{4})*"/
NUMBER: /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/
%import common.WS
%ignore WS
"""

# What the terminals are called in error messages.
_TERMINALS = {
    "OP": "a comparison (=, !=, <, <=, >, >=)", "_OR": "or", "_AND": "and", "_NOT": "not",
    "_IN": "in", "_EXISTS": "exists", "_MATCHES": "matches", "_TRUE": "true",
    "_FALSE": "false", "_NULL": "null", "NAME": "a field name", "STRING": "a string",
    "NUMBER": "a number", "LPAR": "(", "RPAR": ")", "LSQB": "[", "RSQB": "]",
    "COMMA": ",", "DOT": ".", "$END": "the end of the query",
}

_parser = Lark(GRAMMAR, parser="lalr", maybe_placeholders=False, propagate_positions=False)

_VERSION = re.compile(r"^([0-9]{1,9}(?:\.[0-9]{1,9})+)")


class QueryError(Invalid):
    """A query that cannot be read: C{position} (0-based) and what was
    expected there are in the message."""

    def __init__(self, message: str, position: int | None = None) -> None:
        if position is not None:
            message = "where: at position %d: %s" % (position + 1, message)
        else:
            message = "where: %s" % message
        super().__init__(message, "where")
        self.position = position


# The tree


Scalar = Union[str, int, float, bool, None]


@dataclass(frozen=True)
class Field:
    """C{kind}: a column name, "online", "shared_with", "info" or
    "shadow"; C{path}: the JSON path within info or the stored shadow
    document (C{("state", "reported", "env", "temp")},
    C{("tags", "site")}), empty for the others."""

    kind: str
    path: tuple[str, ...] = ()
    text: str = ""

    @property
    def indexed(self) -> bool:
        """Whether the stores keep this path in their index of facts."""
        if self.kind == "info":
            return len(self.path) == 1 and self.path[0] in INDEXED_INFO
        return self.kind == "shadow" and len(self.path) >= 2 and self.path[0] == "tags"

    @property
    def section(self) -> str | None:
        """The shadow section a restricted key's scope governs, or None."""
        if self.kind == "shadow" and len(self.path) >= 3 and self.path[0] == "state":
            return self.path[1]
        return None


@dataclass(frozen=True)
class Compare:
    field: Field
    op: str  # = < <= > >=  (!= is Not(Compare =))
    value: Scalar

    @property
    def version(self) -> str | None:
        """The padded version key of the value, if this compares versions."""
        if self.op in ("<", "<=", ">", ">=") and isinstance(self.value, str):
            return version_key(self.value)
        return None


@dataclass(frozen=True)
class In:
    field: Field
    values: tuple[Scalar, ...]


@dataclass(frozen=True)
class Exists:
    field: Field


@dataclass(frozen=True)
class Matches:
    field: Field
    pattern: str

    @property
    def prefix(self) -> str:
        """The literal part before the first wildcard."""
        return re.split(r"[*?]", self.pattern, maxsplit=1)[0]


@dataclass(frozen=True)
class Not:
    term: Any


@dataclass(frozen=True)
class And:
    terms: tuple[Any, ...]


@dataclass(frozen=True)
class Or:
    terms: tuple[Any, ...]


Node = Union[Compare, In, Exists, Matches, Not, And, Or]


def version_key(text: Any) -> str | None:
    """A string that sorts as versions do (C{"1.10.0"} after C{"1.9.2"}), or
    None if C{text} does not start with a version."""
    if not isinstance(text, str):
        return None
    m = _VERSION.match(text)
    if m is None:
        return None
    return ".".join("%09d" % int(part) for part in m.group(1).split("."))


def version_numbers(text: str) -> list[int] | None:
    key = version_key(text)
    return None if key is None else [int(p) for p in key.split(".")]


def _field(parts: list[str], text: str) -> Field:
    head = parts[0]
    lower = head.lower()
    if len(parts) == 1:
        if lower in COLUMNS:
            return Field(lower, (), text)
        if lower in ("online", "shared_with"):
            return Field(lower, (), text)
    if lower == "info" and len(parts) >= 2:
        return Field("info", tuple(parts[1:]), text)
    if lower == "shadow" and len(parts) >= 2:
        section = parts[1]
        if section in ("desired", "reported") and len(parts) >= 3:
            return Field("shadow", ("state", section) + tuple(parts[2:]), text)
        if section == "tags" and len(parts) >= 3:
            return Field("shadow", tuple(parts[1:]), text)
        if section in ("version", "timestamp") and len(parts) == 2:
            return Field("shadow", (section,), text)
    raise ValueError(
        "unknown field %s: fields are id, name, online, last_seen, created, account_id, "
        "shared_with, info.KEY, shadow.desired.KEY, shadow.reported.KEY, shadow.tags.KEY, "
        "shadow.version" % text)


class _At(ValueError):
    """A mistake at a position of the query."""

    def __init__(self, message: str, position: int | None) -> None:
        super().__init__(message)
        self.position = position


class _Build(Transformer):  # type: ignore[type-arg]
    def field(self, items: list[Token]) -> Field:
        parts = []
        at = getattr(items[0], "start_pos", None)
        for item in items:
            name = _string(item) if item.type == "STRING" else str(item)
            if '"' in name or "\\" in name:
                raise _At("field names may not hold \" or \\", at)
            if not name or len(name) > MAX_SEGMENT_LENGTH:
                raise _At("field names are 1 to %d characters" % MAX_SEGMENT_LENGTH, at)
            parts.append(name)
        if len(parts) > MAX_PATH_SEGMENTS:
            raise _At("a field has at most %d parts" % MAX_PATH_SEGMENTS, at)
        text = ".".join(str(i) for i in items)
        try:
            return _field(parts, text)
        except ValueError as e:
            raise _At(str(e), at) from None

    def string(self, items: list[Token]) -> str:
        return _string(items[0])

    def number(self, items: list[Token]) -> int | float:
        text = str(items[0])
        if re.fullmatch(r"-?[0-9]+", text):
            return int(text)
        value = float(text)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("the number %s is out of range" % text)
        return value

    def true(self, _: list[Any]) -> bool:
        return True

    def false(self, _: list[Any]) -> bool:
        return False

    def null(self, _: list[Any]) -> None:
        return None

    def compare(self, items: list[Any]) -> Node:
        field, op, value = items
        op = str(op)
        _check_value(field, value)
        if op == "!=":
            return Not(Compare(field, "=", value))
        if op != "=" and (value is None or isinstance(value, bool)):
            raise ValueError("%s compares only numbers and strings, not %s"
                             % (op, _json_name(value)))
        return Compare(field, op, value)

    def within(self, items: list[Any]) -> Node:
        field, values = items[0], tuple(items[1:])
        if len(values) > MAX_IN_VALUES:
            raise ValueError("in [...] holds at most %d values" % MAX_IN_VALUES)
        for value in values:
            _check_value(field, value)
        return In(field, values)

    def exists(self, items: list[Any]) -> Node:
        return Exists(items[0])

    def matches(self, items: list[Any]) -> Node:
        return Matches(items[0], _string(items[1]))

    def truth(self, items: list[Any]) -> Node:
        return Compare(items[0], "=", True)

    def negation(self, items: list[Any]) -> Node:
        return Not(items[0])

    def and_expr(self, items: list[Any]) -> Node:
        return And(tuple(items))

    def or_expr(self, items: list[Any]) -> Node:
        return Or(tuple(items))


def _check_value(field: Field, value: Any) -> None:
    if field.kind == "online" and not isinstance(value, bool):
        raise ValueError("online is true or false")
    if field.kind == "shared_with" and not isinstance(value, str):
        raise ValueError("shared_with is compared with an account ID (a string)")


def _json_name(value: Any) -> str:
    return "null" if value is None else "true or false"


def _string(token: Any) -> str:
    import json

    return json.loads(str(token))


def _expected(names: Any) -> str:
    shown = sorted({_TERMINALS.get(n, n) for n in names})
    if not shown:
        return ""
    if len(shown) == 1:
        return "expected %s" % shown[0]
    return "expected one of: %s" % ", ".join(shown)


def parse(text: Any) -> Node:
    """The tree of a query.
    @raise QueryError: it is not one (saying where, and what was expected)."""
    if not isinstance(text, str) or not text.strip():
        raise QueryError("the query is empty")
    if len(text) > MAX_QUERY_LENGTH:
        raise QueryError("a query is at most %d characters" % MAX_QUERY_LENGTH)
    if text.count("(") > MAX_DEPTH:
        raise QueryError("a query has at most %d parentheses" % MAX_DEPTH)
    try:
        tree = _parser.parse(text)
    except UnexpectedToken as e:
        if e.token.type == "$END":
            raise QueryError("the query ends too soon: %s" % _expected(e.expected),
                             len(text) - 1 if text else 0) from None
        raise QueryError("unexpected %r: %s" % (str(e.token), _expected(e.expected)),
                         e.pos_in_stream) from None
    except UnexpectedCharacters as e:
        char = text[e.pos_in_stream]
        if char == '"':
            what = "a string that is not closed or holds a bad escape"
        else:
            what = "unexpected character %r" % char
        allowed = _expected(e.allowed or ())
        raise QueryError("%s%s" % (what, ": " + allowed if allowed else ""),
                         e.pos_in_stream) from None
    except UnexpectedEOF as e:
        raise QueryError("the query ends too soon: %s" % _expected(e.expected),
                         len(text) - 1) from None
    except UnexpectedInput as e:  # pragma: no cover - the kinds above are all Lark raises
        raise QueryError(str(e)) from None
    try:
        return _Build().transform(tree)  # type: ignore[no-any-return]
    except VisitError as e:
        raise QueryError(str(e.orig_exc), getattr(e.orig_exc, "position", None)) from None


# Who may query what


def fields(node: Any) -> list[Field]:
    """Every field C{node} refers to."""
    if isinstance(node, (And, Or)):
        return [f for t in node.terms for f in fields(t)]
    if isinstance(node, Not):
        return fields(node.term)
    return [node.field]


def check_access(node: Any, restricted: bool) -> None:
    """Refuse a query of fields the key's kind never sees: a restricted key
    sees id, name, online, last_seen and the desired and reported keys its
    scope lists (checked device by device where the query runs).
    @raise QueryError: naming the field."""
    if not restricted:
        return
    for field in fields(node):
        if field.kind in ("id", "name", "online", "last_seen") or field.section in (
                "desired", "reported"):
            continue
        raise QueryError("this key may not query %s: a restricted key may query id, name, "
                         "online, last_seen and the shadow keys it may read" % field.text)


def readable(allowed: list[str], path: tuple[str, ...]) -> bool:
    """Whether a restricted key that may read the dotted keys C{allowed}
    may read the shadow path C{path} (C{("state", "reported", ...)}):
    a key covers itself and everything under it."""
    keys = path[2:]
    for entry in allowed:
        parts = tuple(entry.split("."))
        if keys[: len(parts)] == parts:
            return True
    return False


# Facts: what the stores index of each device


def facts(info: dict[str, Any] | None = None,
          tags: dict[str, Any] | None = None) -> list[tuple[str, str, str, str | None,
                                                            float | None, str | None]]:
    """The rows of the stores' index for a device's C{info} (the keys of
    L{INDEXED_INFO}) or its shadow C{tags} (every path): C{(section, path,
    type, text, number, version)}; C{path} is L{path_key} of the field's
    path, C{type} the JSON type, C{text} a string's value (or "true" and
    "false"), C{number} a number's, C{version} the L{version_key} of a
    string."""
    rows: list[Any] = []
    if info is not None:
        for key in INDEXED_INFO:
            if key in info:
                rows.append(("info",) + _fact(path_key((key,)), info[key]))
    if tags is not None:
        def walk(prefix: tuple[str, ...], value: Any) -> None:
            rows.append(("tags",) + _fact(path_key(prefix), value))
            if isinstance(value, dict) and len(prefix) < MAX_PATH_SEGMENTS:
                for k, v in value.items():
                    walk(prefix + (k,), v)

        for k, v in tags.items():
            walk(("tags", k), v)
    return rows


def _fact(path: str, value: Any) -> tuple[str, str, str | None, float | None, str | None]:
    if value is None:
        return path, "null", None, None, None
    if isinstance(value, bool):
        return path, "boolean", "true" if value else "false", None, None
    if isinstance(value, (int, float)):
        return path, "number", None, float(value), None
    if isinstance(value, str):
        return path, "string", value, None, version_key(value)
    if isinstance(value, dict):
        return path, "object", None, None, None
    return path, "array", None, None, None


def path_key(path: tuple[str, ...]) -> str:
    """A path as the index keeps it: its parts joined by dots, a dot or
    backslash within a part escaped with a backslash."""
    return ".".join(p.replace("\\", "\\\\").replace(".", "\\.") for p in path)


# Paging


@dataclass(frozen=True)
class Selection:
    """Which devices a store is asked for: those C{where} matches (None:
    all) among those the caller sees, C{limit} of them (None: all) after
    the cursor C{after} (the last one's order value and ID) in C{order}.

    Who sees what: C{account_id}'s devices and those shared with it (None:
    every account, for the console); for a restricted key also only
    C{devices}, with C{readable} (device -> the shadow keys it may read).
    C{online}: the IDs of the devices online now, given when C{where}
    refers to ``online`` (the router knows, not the store)."""

    where: Any = None
    account_id: str | None = None
    devices: tuple[str, ...] | None = None
    readable: dict[str, list[str]] | None = None
    online: tuple[str, ...] | None = None
    order: str = "created"
    limit: int | None = None
    after: tuple[Any, str] | None = None


def uses_online(node: Any) -> bool:
    return node is not None and any(f.kind == "online" for f in fields(node))


def order_value(order: str, device: Any) -> Any:
    """The value of a device that C{order} sorts by (the cursor's)."""
    column = order.lstrip("-")
    if column == "last_seen":
        return device.last_seen if device.last_seen is not None else -1.0
    return getattr(device, column)


ORDERS = ("created", "-created", "name", "-name", "id", "-id", "last_seen", "-last_seen")


def check_order(order: Any) -> str:
    if order not in ORDERS:
        raise Invalid("order must be one of %s" % ", ".join(ORDERS), "order")
    return str(order)
