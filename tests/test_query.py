"""
The device query language (dashd.domain.query): its parser and its errors,
and its SQL (dashd.store.query_sql) on both stores, checked against a plain
Python reading of the same tree over the same devices.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from dashd.domain import query as q
from dashd.domain import shadow, tokens
from dashd.domain.model import Account, ApiKey, Device
from dashd.store import sqlite as sqlite_store

from support import within
from test_store import open_store
import backends


# The parser


@pytest.mark.parametrize("text", [
    'shadow.tags.site = "berlin" and info.fw_version < "1.4.0" and not online',
    'name matches "lab-*" or (id in ["a", "b"] and shadow.reported.env.temp >= 20.5)',
    'shadow.tags."floor 2" exists',
    "NOT online AND last_seen < 17e8 OR created >= 0",
    'shared_with = "acme" and account_id != "x"',
    "shadow.desired.led != true and info.x.y = null and shadow.version > 3",
    "((online))",
])
def test_queries_parse(text):
    assert q.parse(text) is not None


def test_precedence_and_negation():
    tree = q.parse("online or name = \"a\" and not id = \"b\"")
    assert isinstance(tree, q.Or)
    assert isinstance(tree.terms[1], q.And)
    assert isinstance(tree.terms[1].terms[1], q.Not)
    assert q.parse('name != "a"') == q.Not(q.Compare(q.Field("name", (), "name"), "=", "a"))


@pytest.mark.parametrize("text, message", [
    ("name =", 'at position 6: the query ends too soon: expected one of: a number, a string, '
               "false, null, true"),
    ('name = "x', "at position 8: a string that is not closed or holds a bad escape"),
    ("name == 1", "at position 7: unexpected '=': expected one of: a number, a string"),
    ("(name = 1", "the query ends too soon: expected )"),
    ("and", "at position 1: unexpected 'and': expected one of: (, a field name, not"),
    ('name = 1 and foo = 1', "at position 14: unknown field foo"),
    ("name < true", "< compares only numbers and strings, not true or false"),
    ("online = 1", "online is true or false"),
    ("shadow.tags = 1", "unknown field shadow.tags"),
    ("name in [1,]", "at position 12: unexpected ']'"),
    ("name = 1 ; drop table devices", "at position 10: unexpected character ';'"),
    ("   ", "the query is empty"),
    ("x" * 1025, "a query is at most 1024 characters"),
])
def test_errors_say_where_and_what_was_expected(text, message):
    with pytest.raises(q.QueryError) as e:
        q.parse(text)
    assert e.value.message.startswith("where: ")
    assert message in e.value.message
    assert e.value.field == "where"


def test_versions_compare_number_by_number():
    assert q.version_key("1.10.0") > q.version_key("1.9.2")
    assert q.version_key("1.4") < q.version_key("1.4.0") < q.version_key("1.4.0.1")
    assert q.version_key("2.0.0-rc1") == q.version_key("2.0.0")
    assert q.version_key("beta") is None and q.version_key("7") is None


def test_a_restricted_key_may_not_query_what_it_never_sees():
    for text in ('info.arch = "esp32"', 'shadow.tags.site = "x"', "created > 0",
                 'shared_with = "a"', 'account_id = "a"', "shadow.version > 1"):
        with pytest.raises(q.QueryError, match="this key may not query"):
            q.check_access(q.parse(text), restricted=True)
    q.check_access(q.parse('shadow.reported.temp > 1 and name = "x" and online'), True)


# The same queries in the stores, against Python's reading of them


def evaluate(node: Any, device: Device, online: set[str],
             readable: dict[str, list[str]] | None = None) -> bool:
    if isinstance(node, q.And):
        return all(evaluate(t, device, online, readable) for t in node.terms)
    if isinstance(node, q.Or):
        return any(evaluate(t, device, online, readable) for t in node.terms)
    if isinstance(node, q.Not):
        return not evaluate(node.term, device, online, readable)
    field = node.field
    if field.kind == "online":
        values = [device.id in online]
    elif field.kind == "shared_with":
        values = list(device.shared_with)
        if isinstance(node, q.Exists):
            return bool(values)
    elif field.kind in q.COLUMNS:
        values = [getattr(device, field.kind)]
        if values == [None] and not isinstance(node, q.Compare):
            values = []
    else:
        if readable is not None and field.section is not None and not q.readable(
                readable.get(device.id, []), field.path):
            values = []
        else:
            doc: Any = device.info if field.kind == "info" else device.shadow
            for part in field.path:
                if not isinstance(doc, dict) or part not in doc:
                    doc = _MISSING
                    break
                doc = doc[part]
            values = [] if doc is _MISSING else [doc]
    if isinstance(node, q.Exists):
        return bool(values)
    return any(_leaf(node, v) for v in values)


_MISSING = object()


def _same_type(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (int, float)):
        return isinstance(b, (int, float))
    return type(a) is type(b)


def _leaf(node: Any, value: Any) -> bool:
    import fnmatch
    import operator

    if isinstance(node, q.Matches):
        return isinstance(value, str) and fnmatch.fnmatchcase(
            value, node.pattern.replace("[", "[[]"))
    if isinstance(node, q.In):
        return any(_leaf(q.Compare(node.field, "=", v), value) for v in node.values)
    if node.version is not None:
        key = q.version_key(value)
        if key is None or not isinstance(value, str):
            return False
        a, b = key, node.version
    else:
        if not _same_type(value, node.value):
            return False
        a, b = value, node.value
    ops = {"=": operator.eq, "<": operator.lt, "<=": operator.le, ">": operator.gt,
           ">=": operator.ge}
    if isinstance(a, str):
        a, b = a.encode("utf-8"), b.encode("utf-8")
    return ops[node.op](a, b)


QUERIES = [
    'shadow.tags.site = "berlin"',
    'shadow.tags.site = "berlin" and info.fw_version < "1.4.0" and not online',
    'shadow.tags.site != "berlin"',
    'shadow.tags.site in ["berlin", "paris"]',
    "shadow.tags.site exists",
    "not shadow.tags.site exists",
    'shadow.tags.site matches "b*"',
    'shadow.tags.site matches "?aris"',
    'shadow.tags.site < "c"',
    "shadow.tags.floor >= 2",
    "shadow.tags.floor = 2.0",
    'shadow.tags.floor = "2"',
    "shadow.tags.loc.room = 7",
    "shadow.tags.loc exists",
    "shadow.tags.vip = true",
    "shadow.tags.vip = false or shadow.tags.vip = null",
    'shadow.tags."odd.key" = 1',
    'info.fw_version > "1.9.2"',
    'info.fw_version >= "1.10.0"',
    'info.fw_version <= "1.4"',
    'info.fw_version = "1.10.0"',
    'info.fw_version matches "1.1*"',
    'info.arch in ["esp32"]',
    "info.ram_free > 50000",
    'info.board.rev = "c"',
    "shadow.reported.env.temp > 20",
    "shadow.reported.env.temp <= 20 or shadow.reported.env.temp exists",
    'shadow.reported.env.temp = "25"',
    "shadow.reported.led = true",
    "shadow.desired.led != true",
    'shadow.reported.ota.fw_version < "1.10"',
    'shadow.reported.list = "a"',
    "shadow.version >= 2",
    "online",
    "not online",
    "online = false and shadow.tags.site exists",
    'name matches "dev-1*"',
    'name > "dev-3"',
    'id in ["nope"]',
    "last_seen = null",
    "last_seen > 5",
    "created < 103.5",
    'shared_with = "friend"',
    "shared_with exists",
    'shared_with matches "fr*"',
    'shared_with in ["other", "nobody"]',
    'account_id = "nobody"',
    '(shadow.tags.site = "berlin" or shadow.tags.site = "paris") and not (info.arch = "esp32")',
]


async def _fleet(store) -> tuple[Account, list[Device]]:
    account = Account(tokens.new_id("a"), "acme", 1.0)
    key = ApiKey(tokens.new_id("k"), account.id, "admin", "admin", 1.0)
    await store.bootstrap_admin_key(key, "h" * 64, account)
    specs = [
        ({"site": "berlin", "floor": 2, "loc": {"room": 7}, "vip": True, "odd.key": 1},
         {"fw_version": "1.3.9", "arch": "esp32", "ram_free": 60000},
         {"env": {"temp": 21.5}, "led": True, "ota": {"fw_version": "1.3.9"}, "list": ["a"]},
         {"led": True}, ("friend",)),
        ({"site": "berlin", "floor": "2", "vip": False},
         {"fw_version": "1.10.0", "arch": "esp8266", "ram_free": 1000, "board": {"rev": "c"}},
         {"env": {"temp": "25"}, "ota": {"fw_version": "1.10.0"}}, {"led": False}, ()),
        ({"site": "paris", "floor": 5.5, "vip": None},
         {"fw_version": "1.9.2", "arch": "esp32"},
         {"env": {"temp": 19}, "led": False, "ota": {"fw_version": "1.9.2"}}, {}, ("other",)),
        ({"site": "bonn", "alias": "paris"}, {"fw_version": "beta", "arch": "posix"},
         {"env": {"temp": None}}, {"led": True}, ()),
        ({}, {}, {}, {}, ()),
        ({"site": ["berlin"]}, {"fw_version": "2.0.0-rc1"}, {"env": {}}, {}, ("friend", "x")),
    ]
    devices = []
    for i, (tags, info, reported, desired, shares) in enumerate(specs):
        device = Device(tokens.new_id("d"), account.id, "dev-%d" % i, 100.0 + i,
                        shared_with=shares)
        await store.create_device(device, tokens.new_id("t"))
        update = shadow.ShadowUpdate(patches={"tags": tags, "reported": reported,
                                              "desired": desired})
        await store.update_shadow(device.id, update, 200.0)
        if info:
            await store.record_info(device.id, info, None, 10.0 * i)
        devices.append(await store.get_device(device.id))
    return account, devices


@pytest.fixture(params=backends.STORES)
def store(request, tmp_path):
    s, cleanup = open_store(request.param, tmp_path)
    yield s
    pytest_twisted.blockon(s.stop())
    cleanup()


@pytest_twisted.ensureDeferred
async def test_the_stores_agree_with_python(store):
    account, devices = await _fleet(store)
    online = {devices[0].id, devices[3].id}
    checked = 0
    for text in QUERIES:
        node = q.parse(text)
        selection = q.Selection(where=node, account_id=account.id,
                                online=tuple(online) if q.uses_online(node) else None)
        got = [d.id for d in await within(store.select_devices(selection))]
        want = [d.id for d in devices if evaluate(node, d, online)]
        assert got == want, text
        assert await store.count_devices(selection) == len(want), text
        checked += bool(want) and len(want) < len(devices)
    # The table is no use if every query matched all or nothing.
    assert checked > len(QUERIES) // 2


@pytest_twisted.ensureDeferred
async def test_a_restricted_selection_sees_only_readable_keys(store):
    account, devices = await _fleet(store)
    readable = {devices[0].id: ["env"], devices[1].id: ["led"], devices[2].id: ["env.temp"]}
    for text in ["shadow.reported.env.temp exists", "not shadow.reported.env.temp exists",
                 "shadow.reported.led exists", "shadow.reported.ota exists",
                 "not shadow.reported.ota exists", 'name matches "dev-*"']:
        node = q.parse(text)
        selection = q.Selection(where=node, account_id=account.id,
                                devices=tuple(readable), readable=readable)
        got = [d.id for d in await store.select_devices(selection)]
        want = [d.id for d in devices if d.id in readable
                and evaluate(node, d, set(), readable)]
        assert got == want, text
    # It never reads a key it may not read, even to rule devices out.
    node = q.parse("shadow.reported.ota exists")
    selection = q.Selection(where=node, account_id=account.id, devices=tuple(readable),
                            readable=readable)
    assert await store.count_devices(selection) == 0


@pytest_twisted.ensureDeferred
async def test_pages_follow_the_order_without_gaps_or_repeats(store):
    account, devices = await _fleet(store)
    for order in q.ORDERS:
        seen: list[str] = []
        after = None
        while True:
            page = await store.select_devices(q.Selection(
                account_id=account.id, order=order, limit=2, after=after))
            seen.extend(d.id for d in page[:2])
            if len(page) <= 2:
                break
            last = page[1]
            after = (q.order_value(order, last), last.id)
        column = order.lstrip("-")

        def key(d: Device) -> Any:
            value = q.order_value(order, d)
            return (value.encode() if isinstance(value, str) else value, d.id.encode())

        want = [d.id for d in sorted(devices, key=key, reverse=order.startswith("-"))]
        assert seen == want, order
        assert column in ("created", "name", "id", "last_seen")


@pytest_twisted.ensureDeferred
async def test_tags_and_firmware_changes_reach_the_index(store):
    account, devices = await _fleet(store)
    device = devices[0]

    async def ids(text: str) -> list[str]:
        selection = q.Selection(where=q.parse(text), account_id=account.id)
        return [d.id for d in await store.select_devices(selection)]

    assert device.id in await ids('shadow.tags.site = "berlin"')
    await store.update_device(device.id, None, None, shadow.ShadowUpdate(
        patches={"tags": {"site": "rome", "loc": None}}), 300.0)
    assert device.id not in await ids('shadow.tags.site = "berlin"')
    assert device.id in await ids('shadow.tags.site = "rome"')
    assert device.id not in await ids("shadow.tags.loc.room exists")
    await store.record_info(device.id, {"fw_version": "3.0.0", "arch": "esp32"}, None, 400.0)
    assert await ids('info.fw_version >= "3.0"') == [device.id]
    await store.delete_device(device.id)
    assert await ids('shadow.tags.site = "rome"') == []


def test_sqlite_migration_indexes_the_devices_there_are(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    conn = sqlite_store.connect(path)
    sqlite_store.migrate(conn, upto=7)
    conn.execute("INSERT INTO accounts (id, name, created) VALUES ('a', 'a', 1)")
    conn.execute(
        "INSERT INTO devices (id, account_id, name, token_hash, created, info, shadow)"
        " VALUES ('d1', 'a', 'd1', 'h', 1, ?, ?)",
        ('{"fw_version": "1.2.0", "uptime": 5}',
         '{"state": {"desired": {}, "reported": {}}, "tags": {"site": "berlin"},'
         ' "version": 1, "timestamp": null}'))
    assert sqlite_store.migrate(conn)[1] >= 8
    rows = conn.execute("SELECT section, path, type, text FROM device_facts"
                        " ORDER BY section, path").fetchall()
    assert rows == [("info", "fw_version", "string", "1.2.0"),
                    ("tags", "tags.site", "string", "berlin")]
    indexes = {r[1] for r in conn.execute("PRAGMA index_list(device_facts)")}
    assert {"device_facts_text", "device_facts_num", "device_facts_version"} <= indexes
    conn.close()


def test_postgresql_migration_indexes_the_devices_there_are():
    import psycopg

    from dashd.store import postgres

    url = backends.create_database()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            postgres.migrate(conn, upto=5)
            conn.execute("INSERT INTO accounts (id, name, created) VALUES ('a', 'a', 1)")
            conn.execute(
                "INSERT INTO devices (id, account_id, name, token_hash, created, info, shadow)"
                " VALUES ('d1', 'a', 'd1', 'h', 1, %s, %s)",
                ('{"fw_version": "1.2.0", "uptime": 5}',
                 '{"state": {"desired": {}, "reported": {}}, "tags": {"site": "berlin"},'
                 ' "version": 1, "timestamp": null}'))
            assert postgres.migrate(conn)[1] >= 6
            rows = conn.execute("SELECT section, path, type, text FROM device_facts"
                                " ORDER BY section, path").fetchall()
            assert rows == [("info", "fw_version", "string", "1.2.0"),
                            ("tags", "tags.site", "string", "berlin")]
            indexes = {r[0] for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'device_facts'")}
            assert {"device_facts_text", "device_facts_num", "device_facts_version"} <= indexes
    finally:
        backends.drop_database(url)
