from __future__ import annotations

from typing import Iterator

import pytest

import backends
from support import Client, DashdProcess


def pytest_sessionfinish(session, exitstatus):
    # The databases this run created for its dashd processes and stores.
    backends.drop_created_databases()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashdProcess]:
    """One dashd shared by the tests of a module; tests register their own
    devices, so they do not see each other's."""
    proc = DashdProcess(str(tmp_path_factory.mktemp("dashd")))
    proc.start()
    yield proc
    proc.stop()
    problems = proc.problems()
    assert not problems, "%s\n--- dashd log ---\n%s" % (problems, proc.log()[-5000:])


@pytest.fixture
def own_server(tmp_path) -> Iterator[DashdProcess]:
    """A dashd for one test that restarts or kills it."""
    proc = DashdProcess(str(tmp_path))
    yield proc
    if proc.proc is not None:
        proc.stop()
    problems = proc.problems()
    assert not problems, "%s\n--- dashd log ---\n%s" % (problems, proc.log()[-5000:])


@pytest.fixture
def admin(server: DashdProcess) -> Client:
    return Client(server, server.admin_key)
