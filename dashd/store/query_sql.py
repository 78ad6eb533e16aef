"""
Device queries (L{dashd.domain.query}) as SQL, for SQLite and PostgreSQL:
the same tree becomes one ``WHERE`` clause over ``devices d`` with the
same meaning on both.

- Columns (``id``, ``name``, ``created``, ...) are compared directly;
  strings bytewise on both stores (``COLLATE "C"`` on PostgreSQL).
- ``online`` is the list of device IDs the router has online, given with
  the selection (the store does not know who is connected).
- ``shared_with`` is a subquery of ``device_shares``.
- The paths the stores index, every path under ``shadow.tags`` and the
  firmware keys of ``info`` (L{dashd.domain.query.INDEXED_INFO}), are a
  subquery of ``device_facts``, kept by the stores whenever tags or
  firmware change, with an index per kind of value: a selection by site or
  firmware version reads only the devices it finds.
- Any other path is read from the JSON documents of each device the rest
  of the query leaves (SQLite's JSON functions, PostgreSQL's ``json``
  operators): a full scan when nothing else narrows it down.

Every leaf is true or false, never NULL (a missing path is false), so that
``not`` is the plain complement.
"""

from __future__ import annotations

import json
from typing import Any

from dashd.domain import query as q

# A bound parameter on each store.
_MARK = {"sqlite": "?", "postgresql": "%s"}
_TRUE = {"sqlite": "1", "postgresql": "true"}
_FALSE = {"sqlite": "0", "postgresql": "false"}
_COLUMN_SQL = {"id": "d.id", "name": "d.name", "account_id": "d.account_id",
               "created": "d.created", "last_seen": "d.last_seen"}
# The version key of a JSON string on PostgreSQL: its numbers as an array.
_PG_VERSION = ("string_to_array(substring(%s from '^[0-9]{1,9}(?:\\.[0-9]{1,9})+'), '.')"
               "::bigint[]")


class Compiler:
    """Builds the SQL of one selection; C{params} in the order of the marks."""

    def __init__(self, dialect: str, selection: q.Selection) -> None:
        self.dialect = dialect
        self.sel = selection
        self.params: list[Any] = []

    # Helpers

    def p(self, value: Any) -> str:
        self.params.append(value)
        return _MARK[self.dialect]

    @property
    def true(self) -> str:
        return _TRUE[self.dialect]

    @property
    def false(self) -> str:
        return _FALSE[self.dialect]

    @property
    def pg(self) -> bool:
        return self.dialect == "postgresql"

    def text(self, expr: str) -> str:
        """A string expression compared bytewise."""
        return expr + ' COLLATE "C"' if self.pg else expr

    def id_list(self, ids: tuple[str, ...] | list[str]) -> str:
        """C{d.id} is one of C{ids}."""
        if not ids:
            return self.false
        if self.pg:
            # A subquery, not = ANY(array): PostgreSQL then hashes the list
            # once instead of walking it for every device.
            return "d.id IN (SELECT unnest(%s::text[]))" % self.p(list(ids))
        return "d.id IN (SELECT value FROM json_each(%s))" % self.p(json.dumps(list(ids)))

    def glob(self, pattern: str) -> str:
        """A match of C{pattern} (* and ?) as GLOB or LIKE's pattern."""
        if self.pg:
            out = []
            for ch in pattern:
                if ch == "*":
                    out.append("%")
                elif ch == "?":
                    out.append("_")
                elif ch in "%_\\":
                    out.append("\\" + ch)
                else:
                    out.append(ch)
            return "".join(out)
        return pattern.replace("[", "[[]")

    def matches(self, expr: str, node: q.Matches, ranged: bool = True) -> str:
        """C{expr} (a string) matches the glob; C{ranged} (C{expr} holds no
        parameter): with the range of its literal prefix spelled out, so
        that an index on C{expr} serves."""
        if self.pg:
            out = "%s LIKE %s ESCAPE '\\'" % (self.text(expr), self.p(self.glob(node.pattern)))
        else:
            out = "%s GLOB %s" % (expr, self.p(self.glob(node.pattern)))
        prefix = node.prefix
        if prefix and ranged:
            out += " AND %s >= %s" % (self.text(expr), self.p(prefix))
            upper = _after_prefix(prefix)
            if upper is not None:
                out += " AND %s < %s" % (self.text(expr), self.p(upper))
        return out

    def version(self, expr: str) -> str:
        """The version key of the string C{expr} (NULL if not a version)."""
        if self.pg:
            return _PG_VERSION % expr
        return "dashd_version(%s)" % expr

    def version_value(self, node: q.Compare) -> str:
        assert isinstance(node.value, str)
        if self.pg:
            return "%s::bigint[]" % self.p(q.version_numbers(node.value))
        return self.p(node.version)

    # The tree

    def where(self) -> str:
        parts = [self.visibility()]
        if self.sel.where is not None:
            parts.append(self.node(self.sel.where))
        return " AND ".join("(%s)" % part for part in parts)

    def visibility(self) -> str:
        sel = self.sel
        parts = []
        if sel.account_id is not None:
            a = self.p(sel.account_id)
            b = self.p(sel.account_id)
            parts.append("d.account_id = %s OR d.id IN (SELECT device_id FROM device_shares"
                         " WHERE account_id = %s)" % (a, b))
        if sel.devices is not None:
            parts.append(self.id_list(sel.devices))
        if not parts:
            return self.true
        return " AND ".join("(%s)" % part for part in parts)

    def node(self, node: Any) -> str:
        if isinstance(node, q.And):
            return " AND ".join("(%s)" % self.node(t) for t in node.terms)
        if isinstance(node, q.Or):
            return " OR ".join("(%s)" % self.node(t) for t in node.terms)
        if isinstance(node, q.Not):
            return "NOT (%s)" % self.node(node.term)
        field = node.field
        if field.kind in _COLUMN_SQL:
            return self.column(node)
        if field.kind == "online":
            return self.online(node)
        if field.kind == "shared_with":
            return self.shared_with(node)
        if field.section is not None and self.sel.readable is not None:
            # A restricted key: only on the devices whose scope lets it
            # read the path; elsewhere the path is as absent.
            ids = [d for d, keys in self.sel.readable.items() if q.readable(keys, field.path)]
            if not ids:
                return self.false
            return "(%s) AND (%s)" % (self.id_list(ids), self.document(node))
        if field.indexed:
            return self.fact(node)
        return self.document(node)

    # Columns

    def column(self, node: Any) -> str:
        field = node.field
        expr = _COLUMN_SQL[field.kind]
        kind = q.COLUMNS[field.kind]
        if isinstance(node, q.Exists):
            return "%s IS NOT NULL" % expr
        if isinstance(node, q.Matches):
            return self.matches(expr, node) if kind == "string" else self.false
        if isinstance(node, q.In):
            terms = [self.column(q.Compare(field, "=", v)) for v in node.values]
            return " OR ".join("(%s)" % t for t in terms) if terms else self.false
        value = node.value
        if value is None:
            return "%s IS NULL" % expr if node.op == "=" else self.false
        if node.version is not None:
            if kind != "string":
                return self.false
            return "COALESCE(%s %s %s, %s)" % (self.version(expr), node.op,
                                               self.version_value(node), self.false)
        if isinstance(value, bool):
            return self.false
        if isinstance(value, str):
            if kind != "string":
                return self.false
            return "%s %s %s" % (self.text(expr), node.op, self.p(value))
        if kind != "number":
            return self.false
        return "COALESCE(%s %s %s, %s)" % (expr, node.op, self.p(value), self.false)

    def online(self, node: Any) -> str:
        ids = self.sel.online or ()
        if isinstance(node, q.Exists):
            return self.true
        values = node.values if isinstance(node, q.In) else (
            (node.value,) if isinstance(node, q.Compare) and node.op == "=" else ())
        wanted = {v for v in values if isinstance(v, bool)}
        if wanted == {True, False}:
            return self.true
        if wanted == {True}:
            return self.id_list(ids)
        if wanted == {False}:
            return "NOT (%s)" % self.id_list(ids)
        return self.false

    def shared_with(self, node: Any) -> str:
        sub = "d.id IN (SELECT s.device_id FROM device_shares s WHERE %s)"
        if isinstance(node, q.Exists):
            return sub % self.true
        if isinstance(node, q.Matches):
            return sub % self.matches("s.account_id", node)
        if isinstance(node, q.In):
            values = [v for v in node.values if isinstance(v, str)]
            if not values:
                return self.false
            return sub % ("s.account_id IN (%s)" % ", ".join(self.p(v) for v in values))
        if node.version is not None:
            return sub % ("COALESCE(%s %s %s, %s)" % (
                self.version("s.account_id"), node.op, self.version_value(node), self.false))
        return sub % ("%s %s %s" % (self.text("s.account_id"), node.op, self.p(node.value)))

    # Indexed paths: device_facts

    def fact(self, node: Any) -> str:
        field = node.field
        section = "info" if field.kind == "info" else "tags"
        mark = len(self.params)
        head = "f.section = %s AND f.path = %s" % (self.p(section),
                                                  self.p(q.path_key(field.path)))
        cond = self.fact_condition(node)
        if cond is None:
            del self.params[mark:]
            return self.false
        if self.pg:
            # EXISTS: PostgreSQL plans it as a semi-join (an anti-join under
            # not) that may probe the index per device, instead of hashing
            # every row of a common value (a third of the fleet on esp8266).
            return ("EXISTS (SELECT 1 FROM device_facts f WHERE f.device_id = d.id AND %s"
                    " AND (%s))" % (head, cond))
        return "d.id IN (SELECT f.device_id FROM device_facts f WHERE %s AND (%s))" % (head, cond)

    def fact_condition(self, node: Any) -> str | None:
        if isinstance(node, q.Exists):
            return self.true
        if isinstance(node, q.Matches):
            return "f.type = 'string' AND %s" % self.matches("f.text", node)
        if isinstance(node, q.In):
            terms = [c for c in (self.fact_condition(q.Compare(node.field, "=", v))
                                 for v in node.values) if c is not None]
            return " OR ".join("(%s)" % t for t in terms) if terms else None
        value, op = node.value, node.op
        if value is None:
            return "f.type = 'null'"
        if isinstance(value, bool):
            return "f.type = 'boolean' AND f.text = %s" % self.p("true" if value else "false")
        if node.version is not None:
            return "%s %s %s" % (self.text("f.version"), op, self.p(node.version))
        if isinstance(value, str):
            return "f.type = 'string' AND %s %s %s" % (self.text("f.text"), op, self.p(value))
        return "f.type = 'number' AND f.num %s %s" % (op, self.p(float(value)))

    # Any other path: the JSON document

    def document(self, node: Any) -> str:
        field = node.field
        column = "d.info" if field.kind == "info" else "d.shadow"
        if self.pg:
            return "COALESCE(%s, false)" % self.pg_document(node, column, list(field.path))
        return "COALESCE(%s, 0)" % self.sqlite_document(node, column, _sqlite_path(field.path))

    def sqlite_document(self, node: Any, column: str, path: str) -> str:
        def typ() -> str:
            return "json_type(%s, %s)" % (column, self.p(path))

        def val() -> str:
            return "json_extract(%s, %s)" % (column, self.p(path))

        if isinstance(node, q.Exists):
            return "%s IS NOT NULL" % typ()
        if isinstance(node, q.Matches):
            t = typ()
            return "%s = 'text' AND %s" % (t, self.matches(val(), node, ranged=False))
        if isinstance(node, q.In):
            terms = [self.sqlite_document(q.Compare(node.field, "=", v), column, path)
                     for v in node.values]
            return " OR ".join("COALESCE(%s, 0)" % t for t in terms) if terms else "0"
        value, op = node.value, node.op
        if value is None:
            return "%s = 'null'" % typ()
        if isinstance(value, bool):
            return "%s = %s" % (typ(), self.p("true" if value else "false"))
        if node.version is not None:
            t = typ()
            return "%s = 'text' AND %s %s %s" % (t, self.version(val()), op,
                                                  self.version_value(node))
        if isinstance(value, str):
            t = typ()
            return "%s = 'text' AND %s %s %s" % (t, val(), op, self.p(value))
        t = typ()
        return "%s IN ('integer', 'real') AND %s %s %s" % (t, val(), op, self.p(value))

    def pg_document(self, node: Any, column: str, path: list[str]) -> str:
        def elem() -> str:
            return "%s #> %s" % (column, self.p(path))

        def typ() -> str:
            return "json_typeof(%s #> %s)" % (column, self.p(path))

        def txt() -> str:
            return "(%s #>> %s)" % (column, self.p(path))

        if isinstance(node, q.Exists):
            return "(%s) IS NOT NULL" % elem()
        if isinstance(node, q.Matches):
            t = typ()
            return "%s = 'string' AND %s" % (t, self.matches(txt(), node, ranged=False))
        if isinstance(node, q.In):
            terms = [self.pg_document(q.Compare(node.field, "=", v), column, path)
                     for v in node.values]
            return " OR ".join("COALESCE(%s, false)" % t for t in terms) if terms else "false"
        value, op = node.value, node.op
        if value is None:
            return "%s = 'null'" % typ()
        if isinstance(value, bool):
            t = typ()
            return "%s = 'boolean' AND %s = %s" % (t, txt(), self.p("true" if value else "false"))
        if node.version is not None:
            t = typ()
            return "CASE WHEN %s = 'string' THEN %s %s %s ELSE false END" % (
                t, self.version(txt()), op, self.version_value(node))
        if isinstance(value, str):
            t = typ()
            return "%s = 'string' AND %s %s %s" % (t, self.text(txt()), op, self.p(value))
        t = typ()
        return "CASE WHEN %s = 'number' THEN %s::numeric %s %s ELSE false END" % (
            t, txt(), op, self.p(value))

    # Order and paging

    def order(self) -> tuple[str, str]:
        """The ORDER BY clause, and the condition that starts after the cursor."""
        order = self.sel.order
        desc = order.startswith("-")
        column = order.lstrip("-")
        expr = {"created": "d.created", "name": self.text("d.name"), "id": self.text("d.id"),
                "last_seen": "COALESCE(d.last_seen, -1)"}[column]
        way = "DESC" if desc else "ASC"
        by = "%s %s" % (expr, way) if column == "id" else "%s %s, %s %s" % (
            expr, way, self.text("d.id"), way)
        after = ""
        if self.sel.after is not None:
            value, last_id = self.sel.after
            cmp = "<" if desc else ">"
            if column == "id":
                after = "%s %s %s" % (self.text("d.id"), cmp, self.p(last_id))
            else:
                after = "(%s %s %s OR (%s = %s AND %s %s %s))" % (
                    expr, cmp, self.p(value), expr, self.p(value), self.text("d.id"), cmp,
                    self.p(last_id))
        return by, after


def _after_prefix(prefix: str) -> str | None:
    """The smallest string greater than every string starting with C{prefix}."""
    for i in range(len(prefix) - 1, -1, -1):
        code = ord(prefix[i])
        if code < 0x10FFFF and not 0xD7FF <= code < 0xDFFF:
            return prefix[:i] + chr(code + 1)
    return None


def _sqlite_path(path: tuple[str, ...]) -> str:
    return "$" + "".join('."%s"' % part for part in path)


def select_sql(dialect: str, selection: q.Selection, columns: str) -> tuple[str, list[Any]]:
    """The SELECT of the devices of C{selection} (one more than its limit,
    to tell whether there is a next page)."""
    c = Compiler(dialect, selection)
    where = c.where()
    by, after = c.order()
    if after:
        where += " AND " + after
    sql = "SELECT %s FROM devices d WHERE %s ORDER BY %s" % (columns, where, by)
    if selection.limit is not None:
        sql += " LIMIT %s" % c.p(selection.limit + 1)
    return sql, c.params


def count_sql(dialect: str, selection: q.Selection) -> tuple[str, list[Any]]:
    c = Compiler(dialect, selection)
    return "SELECT count(*) FROM devices d WHERE %s" % c.where(), c.params
