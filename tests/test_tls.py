"""
TLS on both doors through a Twisted ssl: endpoint, with a CA and a server
certificate made for the test: devices (wss://) and REST clients
(https://) verify the server, and a wrong host name or an unknown CA is
refused.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Iterator

import pytest
import pytest_twisted
from twisted.internet import ssl
from twisted.web.client import ResponseNeverReceived

from certs import make_server_cert
from support import Client, DashdProcess, connect_device, device_online, eventually, within
from dashd.simulator import SimulatedDevice


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashdProcess]:
    directory = tmp_path_factory.mktemp("tls")
    cert = make_server_cert(str(directory), ["localhost"])
    proc = DashdProcess(
        str(directory),
        listen=["ssl:{port}:interface=127.0.0.1:privateKey=%s:certKey=%s" % (cert.key, cert.cert)],
        tls_ca=cert.ca,
        host="localhost",
    )
    proc.start()
    yield proc
    proc.stop()
    problems = proc.problems()
    assert not problems, "%s\n--- dashd log ---\n%s" % (problems, proc.log()[-5000:])


@pytest_twisted.ensureDeferred
async def test_devices_and_rest_over_verified_tls(tls_server: DashdProcess):
    assert tls_server.url.startswith("https://localhost:")
    admin = Client(tls_server, tls_server.admin_key)
    device_id, token = await admin.register("tls")
    sim = await connect_device(tls_server, token)  # wss://, verified against the test CA
    try:
        assert sim.url.startswith("wss://localhost:")
        await device_online(admin, device_id)
        reply = await admin.post("/api/v2/devices/%s/rpc/Sim.Echo" % device_id, {"over": "tls"})
        assert (reply.status, reply.body) == (200, {"over": "tls"})
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_a_wrong_host_name_is_refused(tls_server: DashdProcess):
    # The certificate names localhost; 127.0.0.1 is the same server under a
    # name the certificate does not have.
    by_address = DashdProcess.__new__(DashdProcess)
    by_address.__dict__.update(tls_server.__dict__, host="127.0.0.1")
    admin = Client(by_address, tls_server.admin_key)
    with pytest.raises(ResponseNeverReceived) as e:
        await admin.get("/api/v2/devices")
    assert "IPAddressMismatch" in str(e.value)  # service_identity refused the name

    admin = Client(tls_server, tls_server.admin_key)
    _, token = await admin.register()
    sim = SimulatedDevice(by_address.device_url, token, reconnect=False,
                          tls_options=by_address.tls_options())
    closed = sim.wait_closed()
    sim.start()
    await within(closed, 10)
    # The TLS handshake is aborted: the WebSocket never opens (the same
    # device with the right name does, in the test above).
    assert not sim.online and sim.connections == 0


@pytest_twisted.ensureDeferred
async def test_an_unknown_ca_is_refused(tls_server: DashdProcess, tmp_path):
    other = make_server_cert(str(tmp_path), ["localhost"])
    with open(other.ca, "rb") as f:
        options = ssl.optionsForClientTLS("localhost", trustRoot=ssl.Certificate.loadPEM(f.read()))
    admin = Client(tls_server, tls_server.admin_key)
    _, token = await admin.register()
    sim = SimulatedDevice(tls_server.device_url, token, reconnect=False, tls_options=options)
    closed = sim.wait_closed()
    sim.start()
    await within(closed, 10)
    assert sim.connections == 0
    assert "certificate verify failed" in (sim.close_reason or "")


@pytest_twisted.ensureDeferred
async def test_the_simulator_command_verifies_with_ca(tls_server: DashdProcess):
    admin = Client(tls_server, tls_server.admin_key)
    device_id, token = await admin.register("sim-cli")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashd.simulator", "--url", tls_server.device_url,
         "--token", token, "--ca", tls_server.tls_ca, "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        await device_online(admin, device_id)
    finally:
        proc.terminate()
        proc.wait(10)
    await device_online(admin, device_id, online=False)


@pytest_twisted.ensureDeferred
async def test_the_simulator_command_refuses_a_server_its_ca_did_not_sign(
    tls_server: DashdProcess, tmp_path
):
    """--ca names the only CA the simulator trusts: given another one, it
    never connects to the server (and says why on its standard error)."""
    other = make_server_cert(str(tmp_path), ["localhost"])
    admin = Client(tls_server, tls_server.admin_key)
    device_id, token = await admin.register("sim-cli-wrong-ca")
    errors = tmp_path / "stderr"
    with open(errors, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dashd.simulator", "--url", tls_server.device_url,
             "--token", token, "--ca", other.ca],
            stdout=subprocess.DEVNULL, stderr=err,
        )
    try:
        def refused() -> bool:
            return any("cannot connect" in line and "certificate verify failed" in line
                       for line in errors.read_text().splitlines())

        await eventually(refused, 15)
        view = await admin.device(device_id)
        assert view["online"] is False and view["last_seen"] is None, view
    finally:
        proc.terminate()
        proc.wait(10)
