"""
/api/v2/openapi.json is kept true: schemathesis generates requests from it
(valid and invalid ones) against a live dashd and checks every answer
against it; and real answers of an online device are validated with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests
import schemathesis
from schemathesis.core.failures import FailureGroup

from support import SECRETS, DashdProcess

SCHEMATHESIS = os.path.join(os.path.dirname(sys.executable), "schemathesis")

# 502/503/504 are what an RPC call (or a firmware update or commit) answers
# when the device erred, is offline (every device schemathesis registers is)
# or is late: documented answers, not server errors. Everywhere else a 5xx
# fails the run.
CONFIG = """
[[operations]]
include-path-regex = "/rpc/|/ota"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "502", "503", "504"]

# A device query is a language: strings made up at random are mostly not
# queries, and rightly answered 400 (tests/test_device_query.py has real ones).
[[operations]]
include-operation-id = "countDevices"
warnings = false

# GET /session describes the session a dashd_session cookie names; the run
# authenticates with a key, so it is rightly answered 401 (tests/test_sessions.py
# has real sessions).
[[operations]]
include-operation-id = "getSession"
warnings = false

# A job's routes answer 404 to every job ID schemathesis makes up, and a job
# made up at random is mostly refused (a query, an image, rules that must
# agree): tests/test_jobs.py drives real ones.
[[operations]]
include-path-regex = "/jobs"
warnings = false

# Alarms exist only once a device trips a rule: every ID schemathesis makes
# up is answered 404 (tests/test_alarms_e2e.py acknowledges and clears real ones).
[[operations]]
include-operation-id = ["getAlarm", "acknowledgeAlarm", "clearAlarm"]
warnings = false

# A rule selects its devices with a device query: strings made up at random
# are mostly not queries, and rightly answered 400 (tests/test_alarms*.py
# make real rules).
[[operations]]
include-operation-id = ["createAlarmRule", "changeAlarmRule"]
warnings = false
"""


def test_schemathesis_finds_the_description_true(server: DashdProcess, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    result = subprocess.run(
        [
            SCHEMATHESIS, "--config-file", str(config), "run",
            server.url + "/api/v2/openapi.json",
            "--header", "Authorization: Bearer " + server.admin_key,
            # Every check but one: "valid data is accepted" cannot hold where
            # validity depends on the state (an expiry in the future, the
            # current shadow version).
            "--exclude-checks", "positive_data_acceptance",
            # Revoking keys would revoke the key the run itself uses (it
            # learns key IDs from GET /keys); tests/test_rest.py covers it.
            "--exclude-operation-id", "revokeKey",
            # Committing needs a device back with new firmware; it answers
            # 404 to every device schemathesis can name (tests/test_ota.py
            # covers it).
            "--exclude-operation-id", "commitFirmware",
            # A download link exists only while its pull update runs: any
            # secret schemathesis makes up is answered 404 (tests/test_ota.py
            # downloads real ones; test_firmware_and_history_answers_... checks
            # the 404 against the description).
            "--exclude-operation-id", "downloadFirmware",
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", "15",
            "--seed", "20261125",
            "--workers", "1",
            "--generation-database", "none",
            "--generation-with-security-parameters", "false",
            "--request-timeout", "15",
            "--no-color",
        ],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "Tested: 60" in output, output[-3000:]
    assert "Authentication failed" not in output, output[-3000:]
    assert "No issues found" in output, output[-4000:]


def test_real_answers_match_the_description(server: DashdProcess):
    """Answers the fuzzing above cannot reach: an online device's result
    and its error, and key creation."""
    schema = schemathesis.openapi.from_url(server.url + "/api/v2/openapi.json")
    headers = {"Authorization": "Bearer " + server.admin_key}
    api = server.url + "/api/v2"

    registered = requests.post(api + "/devices", json={"name": "described"},
                               headers=headers, timeout=10)
    schema["/devices"]["POST"].validate_response(registered)
    device_id, token = registered.json()["id"], registered.json()["token"]
    SECRETS.add(token)

    simulator = subprocess.Popen(
        [sys.executable, "-m", "dashd.simulator", "--url", server.device_url,
         "--token", token, "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not requests.get(api + "/devices/" + device_id, headers=headers,
                               timeout=10).json()["online"]:
            assert time.monotonic() < deadline, "the simulated device did not connect"
            time.sleep(0.1)
        rpc = schema["/devices/{device_id}/rpc/{method}"]
        ok = requests.post(api + "/devices/%s/rpc/Sys.GetInfo" % device_id, headers=headers,
                           timeout=15)
        assert ok.status_code == 200
        rpc["POST"].validate_response(ok)
        failed = requests.post(api + "/devices/%s/rpc/Sim.Fail" % device_id,
                               json={"code": 42, "message": "nope"}, headers=headers, timeout=15)
        assert failed.status_code == 502 and failed.json()["error"]["code"] == 42
        rpc["POST"].validate_response(failed)
        late = requests.get(api + "/devices/%s/rpc/Sim.Sleep?timeout=0.2" % device_id,
                            headers=headers, timeout=15)
        assert late.status_code == 504
        rpc["GET"].validate_response(late)
        device = requests.get(api + "/devices/" + device_id, headers=headers, timeout=10)
        schema["/devices/{device_id}"]["GET"].validate_response(device)
        # A job's answers, as it runs and once it has ended.
        job = requests.post(api + "/jobs", json={
            "name": "described", "target": {"devices": [device_id, "dnosuchdevice"]},
            "action": {"type": "rpc", "method": "Sim.Echo", "params": {"a": 1}},
            "abort": [{"on": "any", "percent": 50}]}, headers=headers, timeout=10)
        assert job.status_code == 201, job.text
        schema["/jobs"]["POST"].validate_response(job)
        here = api + "/jobs/" + job.json()["id"]
        while requests.get(here, headers=headers, timeout=10).json()["state"] != "completed":
            assert time.monotonic() < deadline + 15, "the job did not complete"
            time.sleep(0.1)
        schema["/jobs/{job_id}"]["GET"].validate_response(
            requests.get(here, headers=headers, timeout=10))
        executions = requests.get(here + "/executions", headers=headers, timeout=10)
        assert [e["state"] for e in executions.json()] == ["succeeded", "skipped"]
        schema["/jobs/{job_id}/executions"]["GET"].validate_response(executions)
        schema["/jobs"]["GET"].validate_response(
            requests.get(api + "/jobs", headers=headers, timeout=10))
        schema["/jobs/{job_id}/cancel"]["POST"].validate_response(
            requests.post(here + "/cancel", headers=headers, timeout=10))
        schema["/jobs/{job_id}"]["DELETE"].validate_response(
            requests.delete(here, headers=headers, timeout=10))
    finally:
        simulator.terminate()
        simulator.wait(10)

    created = requests.post(api + "/keys", json={"name": "described"}, headers=headers,
                            timeout=10)
    SECRETS.add(created.json()["key"])
    schema["/keys"]["POST"].validate_response(created)

    # The validation can fail: an answer that breaks the description is caught.
    broken = requests.get(api + "/keys", headers=headers, timeout=10)
    broken._content = b'[{"id": 1}]'
    with pytest.raises(FailureGroup) as e:
        schema["/keys"]["GET"].validate_response(broken)
    assert "is not of type" in str(e.value.exceptions[-1])


def test_firmware_and_history_answers_match_the_description(server: DashdProcess):
    """A firmware update's status and the history of an online device, as
    the description says."""
    schema = schemathesis.openapi.from_url(server.url + "/api/v2/openapi.json")
    headers = {"Authorization": "Bearer " + server.admin_key}
    api = server.url + "/api/v2"
    registered = requests.post(api + "/devices", json={"name": "updated"}, headers=headers,
                               timeout=10)
    device_id, token = registered.json()["id"], registered.json()["token"]
    SECRETS.add(token)
    simulator = subprocess.Popen(
        [sys.executable, "-m", "dashd.simulator", "--url", server.device_url,
         "--token", token, "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not requests.get(api + "/devices/" + device_id, headers=headers,
                               timeout=10).json()["online"]:
            assert time.monotonic() < deadline, "the simulated device did not connect"
            time.sleep(0.1)
        started = requests.post(api + "/devices/%s/ota?filename=fw.bin" % device_id,
                                data=b"\xe9" * 5000, headers=dict(
                                    headers, **{"Content-Type": "application/octet-stream"}),
                                timeout=15)
        assert started.status_code == 202, started.text
        schema["/devices/{device_id}/ota"]["POST"].validate_response(started)
        while True:
            status = requests.get(api + "/devices/%s/ota" % device_id, headers=headers,
                                  timeout=10)
            if status.json()["state"] == "uncommitted":
                break
            assert time.monotonic() < deadline + 15, status.json()
            time.sleep(0.1)
        schema["/devices/{device_id}/ota"]["GET"].validate_response(status)
        logs = requests.post(api + "/logs", json={"device_id": device_id}, headers=headers,
                             timeout=10)
        assert {e["name"] for e in logs.json()["events"]} >= {"online", "ota.status"}
        schema["/logs"]["POST"].validate_response(logs)
        data = requests.get(api + "/devices/%s/data" % device_id, headers=headers, timeout=10)
        schema["/devices/{device_id}/data"]["GET"].validate_response(data)
        gone = requests.get(api + "/firmware/no-such-link", timeout=10)
        assert gone.status_code == 404
        schema["/firmware/{secret}"]["GET"].validate_response(gone)
    finally:
        simulator.terminate()
        simulator.wait(10)


# The description against the app's routes, both ways.

# Routes that are not in the description, and why.
NOT_DESCRIBED = {
    ("*", "/api/v2/rpc"): "the device channel, a WebSocket (README: The device channel)",
    ("*", "/api/v2/notify"): "the notification stream, a WebSocket (README: Notifications)",
    ("GET", "/healthz"): "operation, not the REST API (README: Health and metrics)",
    ("GET", "/readyz"): "operation, not the REST API (README: Health and metrics)",
    ("GET", "/metrics"): "Prometheus' text format (README: Health and metrics)",
    ("GET", "/api/v2/openapi.json"): "the description itself",
    ("GET", "/"): "the dashboard's page",
    ("GET", "/ui/{name}"): "the dashboard's files",
}


def app_routes() -> set[tuple[str, str]]:
    """(method, path template) of every route of the Klein app and of the
    door; HEAD is implied by GET, "*" is any method (a WebSocket)."""
    import re

    import dashd.api  # noqa: F401  (registers every route module's routes)
    from dashd.api.base import app
    from dashd.api.door import ROUTES

    found = set(ROUTES)
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or {"*"}) - {"HEAD"}:
            found.add((method, path))
    return found


def described_routes() -> set[tuple[str, str]]:
    from dashd.api import openapi
    from dashd.config import Config

    document = openapi.document(Config(), "test")
    base = document["servers"][0]["url"]
    return {(method.upper(), base + path)
            for path, item in document["paths"].items()
            for method in item if method != "parameters"}


def test_every_route_is_described_or_excluded_for_a_reason():
    missing = app_routes() - described_routes() - set(NOT_DESCRIBED)
    assert missing == set()


def test_everything_described_is_a_route_and_every_exclusion_too():
    routes = app_routes()
    assert described_routes() - routes == set()
    assert set(NOT_DESCRIBED) - routes == set()
    assert set(NOT_DESCRIBED) & described_routes() == set()


def test_limits_in_the_description_are_the_code_s():
    from dashd.api import openapi
    from dashd.app import records
    from dashd.app.devices import MAX_METHOD_LENGTH
    from dashd.config import Config
    from dashd.domain.model import MAX_NAME_LENGTH

    document = openapi.document(Config(), "test")
    paths = document["paths"]
    limit = [p for p in paths["/data"]["get"]["parameters"] if p["name"] == "limit"][0]
    assert limit["schema"]["maximum"] == records.MAX_DATA_LIMIT
    method = [p for p in paths["/devices/{device_id}/rpc/{method}"]["parameters"]
              if p["name"] == "method"][0]
    assert method["schema"]["maxLength"] == MAX_METHOD_LENGTH
    name = paths["/devices"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert name["properties"]["name"]["maxLength"] == MAX_NAME_LENGTH
