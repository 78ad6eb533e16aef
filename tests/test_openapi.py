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
    assert "Tested: 21" in output, output[-3000:]
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
    finally:
        simulator.terminate()
        simulator.wait(10)
