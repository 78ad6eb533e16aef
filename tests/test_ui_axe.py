"""
axe-core on every page of the dashboard, at desktop and phone width
(issue 19: "axe finds no violation on any page"), in Chromium against a
real dashd with a connected device that reports data, a job, an alarm rule
and a webhook, so that each page shows what it shows in use. axe's script
comes from the axe-playwright-python package (the test extra): nothing is
fetched at test time. A screenshot of each page at each width goes to
test-artifacts/ui/ (axe-desktop-devices.png, axe-phone-devices.png, ...).
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from playwright.sync_api import Page, expect

from browser import UI
from support import Client, connect_device, device_online, within
from test_ui import dialog, sign_in, sign_out

# Every rule axe has, of every level: WCAG 2.0-2.2 A and AA and its best
# practices (region, heading order, landmarks).
AXE_OPTIONS = {"resultTypes": ["violations"]}


def axe_violations(page: Page) -> list[str]:
    """axe-core's findings on the page as it is, a line each."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options=AXE_OPTIONS)
    found = []
    for violation in results.response["violations"]:
        for node in violation["nodes"]:
            found.append("%s (%s): %s at %s: %s" % (
                violation["id"], violation["impact"], violation["help"],
                " ".join(str(t) for t in node["target"]), node["html"][:160]))
    return found


def no_violation(page: Page, where: str) -> None:
    # The page settled: no request under way, nothing still fading in.
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(300)
    found = axe_violations(page)
    assert not found, "axe on %s:\n%s" % (where, "\n".join(found))


# (name, address, the page's h1): every view of the router (js/main.js).
def pages(device_id: str, name: str, job_id: str) -> list[tuple[str, str, str]]:
    return [
        ("devices", "/#/devices", "Devices"),
        ("device", "/#/devices/%s" % device_id, name),
        ("device-all", "/#/devices/%s/all" % device_id, name),
        ("logs", "/#/logs", "Logs"),
        ("keys", "/#/keys", "API keys"),
        ("audit", "/#/audit", "Audit log"),
        ("accounts", "/#/accounts", "Accounts"),
        ("alarms", "/#/alarms", "Alarms"),
        ("webhooks", "/#/webhooks", "Webhooks"),
        ("jobs", "/#/jobs", "Jobs"),
        ("job", "/#/jobs/%s" % job_id, "Job axe echo"),
        ("firmware", "/#/firmware", "Firmware"),
    ]


@pytest.mark.parametrize("width", ["desktop", "phone"])
@pytest_twisted.ensureDeferred
async def test_axe_finds_no_violation_on_any_page(server, admin: Client, width: str,
                                                  request: Any):
    ui: UI = request.getfixturevalue("ui" if width == "desktop" else "phone")
    name = "axe-boiler-" + width
    device_id, token = await admin.register(name)
    reply = await admin.post("/api/v2/devices/" + device_id, {"shadow": {
        "state": {"desired": {"fan": "auto"}}, "tags": {"save": ["temp", "state"], "units": {"temp": "°C"}}}})
    assert reply.status == 200, reply
    sim = await connect_device(server, token)
    await device_online(admin, device_id)
    for i in range(4):
        await within(sim.report({"temp": 20 + i, "state": "idle"}))
    reply = await admin.post("/api/v2/jobs", {
        "name": "axe echo", "target": {"devices": [device_id]},
        "action": {"type": "rpc", "method": "Sim.Echo", "params": {"n": 1}}})
    assert reply.status == 201, reply
    job_id = reply.body["id"]
    reply = await admin.post("/api/v2/alarm-rules", {
        "name": "axe hot " + width, "where": 'name = "%s"' % name,
        "severity": "warning", "condition": {"kind": "threshold", "key": "temp", "above": 21,
                                             "clear": 19}})
    assert reply.status in (200, 201), reply

    def signin(page: Page) -> None:
        page.goto("/")
        expect(page.get_by_role("heading", level=1, name="Sign in")).to_be_visible()
        no_violation(page, "the sign-in page")
        ui._shot("axe-%s-signin" % width)

    await ui.run(signin)
    await ui.run(sign_in, admin.key)

    for page_name, address, heading in pages(device_id, name, job_id):
        def visit(page: Page) -> None:
            page.goto(address)
            expect(page.get_by_role("heading", level=1, name=heading)).to_be_visible()
            no_violation(page, "%s (%s) at %s width" % (page_name, address, width))
            ui._shot("axe-%s-%s" % (width, page_name))

        await ui.run(visit)

    def provisioning(page: Page) -> None:
        page.goto("/#/devices")
        page.get_by_role("button", name="Add device").click()
        expect(dialog(page)).to_be_visible()
        no_violation(page, "the Add device dialog at %s width" % width)
        ui._shot("axe-%s-add-device" % width)
        page.keyboard.press("Escape")
        expect(dialog(page)).to_be_hidden()
        sign_out(page)

    await ui.run(provisioning)
    await sim.stop()
    await admin.delete("/api/v2/jobs/" + job_id)
