from __future__ import annotations

from typing import Any, Iterator

import pytest

import backends
from support import Client, DashdProcess


# Modules whose dashd runs on every store backend (DASHD_TEST_STORES); in
# the others (TLS, systemd, limits, shutdown, the OpenAPI document, the
# README) the store is beside the point, and they run on SQLite only, to
# keep the suite short.
STORE_MODULES = {"test_access", "test_audit", "test_calls", "test_ctl", "test_device_channel",
                 "test_device_data", "test_device_query", "test_end_to_end", "test_faults", "test_jobs", "test_library", "test_lifecycle", "test_ops", "test_ota",
                 "test_rest", "test_series", "test_store"}
# Time-range queries of stored data and dashboard sessions (issue 19).
STORE_MODULES |= {"test_data_ranges", "test_sessions", "test_audit_detail"}


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        backend = params.get("server", params.get("own_server"))
        module = item.module.__name__.rpartition(".")[2]
        if backend not in (None, "sqlite") and module not in STORE_MODULES:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_sessionfinish(session, exitstatus):
    # The databases this run created for its dashd processes and stores.
    backends.drop_created_databases()


def _store_url(backend: str) -> str | None:
    """None for SQLite (the default store), else a new PostgreSQL database."""
    return backends.create_database() if backend == "postgresql" else None


@pytest.fixture(scope="module", params=backends.STORES)
def server(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashdProcess]:
    """One dashd shared by the tests of a module, once per store backend
    (DASHD_TEST_STORES); tests register their own devices, so they do not
    see each other's."""
    url = _store_url(request.param)
    proc = DashdProcess(str(tmp_path_factory.mktemp("dashd")), store_url=url)
    proc.start()
    yield proc
    proc.stop()
    if url:
        backends.drop_database(url)
    problems = proc.problems()
    assert not problems, "%s\n--- dashd log ---\n%s" % (problems, proc.log()[-5000:])


@pytest.fixture(params=backends.STORES)
def own_server(request, tmp_path) -> Iterator[DashdProcess]:
    """A dashd for one test that restarts or kills it, once per store backend."""
    url = _store_url(request.param)
    proc = DashdProcess(str(tmp_path), store_url=url)
    yield proc
    if proc.proc is not None:
        proc.stop()
    if url:
        backends.drop_database(url)
    problems = proc.problems()
    assert not problems, "%s\n--- dashd log ---\n%s" % (problems, proc.log()[-5000:])


@pytest.fixture
def admin(server: DashdProcess) -> Client:
    return Client(server, server.admin_key)


# Browser pages for the dashboard's tests (tests/test_ui*.py): one Chromium a module, a page a test, and a
# test fails if its page went wrong in a way it did not explain.


@pytest.fixture(scope="module")
def browser_thread() -> Iterator[Any]:
    from browser import BrowserThread, chromium_missing

    missing = chromium_missing()
    if missing:
        pytest.fail(missing)
    thread = BrowserThread()
    thread.start_browser()
    yield thread
    thread.stop()


def _page(browser_thread: Any, server: DashdProcess, request: Any,
          viewport: dict[str, int] | None) -> Iterator[Any]:
    from browser import open_ui

    page = open_ui(browser_thread, server.url, request.node.nodeid, viewport)
    yield page
    page.close()
    problems = page.unexplained()
    assert not problems, "the page went wrong:\n" + "\n".join(problems)


@pytest.fixture
def ui(browser_thread: Any, server: DashdProcess, request: Any) -> Iterator[Any]:
    yield from _page(browser_thread, server, request, None)


@pytest.fixture
def phone(browser_thread: Any, server: DashdProcess, request: Any) -> Iterator[Any]:
    from browser import PHONE

    yield from _page(browser_thread, server, request, PHONE)


@pytest.fixture
def own_ui(browser_thread: Any, own_server: DashdProcess, request: Any) -> Iterator[Any]:
    """A page on the test's own dashd (which the test starts)."""
    yield from _page(browser_thread, own_server, request, None)
