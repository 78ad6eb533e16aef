"""
The dashboard's Jobs and Firmware pages in a real browser (see test_ui.py):
a job created from a query with a live count of the devices it matches,
its bars and per-device table kept live; an image added to the library and
rolled out from the Firmware page.
"""

from __future__ import annotations

import re

import pytest_twisted
from playwright.sync_api import Page, expect

from support import Client, connect_device, device_online
from test_ota import make_bin
from test_ui import accessible, sign_in


async def _tagged_fleet(server, admin: Client, run: str, n: int) -> list:
    sims = []
    for i in range(n):
        device_id, token = await admin.register("%s-%d" % (run, i))
        reply = await admin.post("/api/v2/devices/" + device_id,
                                 {"shadow": {"tags": {"run": run}}})
        assert reply.status == 200, reply
        sims.append(await connect_device(server, token))
        await device_online(admin, device_id)
    return sims


@pytest_twisted.ensureDeferred
async def test_a_job_from_a_query_with_live_progress(server, admin: Client, ui):
    sims = await _tagged_fleet(server, admin, "uijob", 3)
    # The half-typed query's count is refused, and said so.
    ui.allow(400, "/api/v2/devices/count")
    await ui.run(sign_in, admin.key)

    def create(page: Page) -> None:
        page.get_by_role("link", name="Jobs").click()
        expect(page.get_by_role("heading", level=1, name="Jobs")).to_be_visible()
        accessible(page)
        page.get_by_label("Job name").fill("ui echo")
        page.get_by_label("Devices (a device query)").fill('shadow.tags.run = "uijob"')
        expect(page.get_by_text("3 devices match.")).to_be_visible()
        page.get_by_label("Devices (a device query)").fill('shadow.tags.run =')
        expect(page.locator("p.count.error")).to_contain_text("the query ends too soon")
        page.get_by_label("Devices (a device query)").fill('shadow.tags.run = "uijob"')
        expect(page.get_by_text("3 devices match.")).to_be_visible()
        page.get_by_label("Method").fill("Sim.Echo")
        page.get_by_label("Params (JSON, optional)").fill('{"x": 1}')
        page.get_by_role("button", name="Create job").click()
        expect(page.get_by_role("heading", level=1, name="Job ui echo")).to_be_visible()
        expect(page.get_by_role("progressbar", name="Succeeded: 3 of 3")).to_be_visible(timeout=15_000)
        table = page.get_by_role("table", name="The devices of this job")
        expect(table.get_by_text("Succeeded")).to_have_count(3)
        expect(table).to_contain_text('{"x":1}')
        page.get_by_label("Show").select_option("failed")
        expect(table.locator("tbody tr")).to_have_count(0)
        accessible(page)

    await ui.run(create)
    await ui.shot("job-completed")
    assert [s.methods.count("Sim.Echo") for s in sims] == [1, 1, 1]

    def delete(page: Page) -> None:
        page.get_by_role("button", name="Delete job").click()
        expect(page.get_by_role("heading", level=1, name="Jobs")).to_be_visible()
        expect(page.get_by_role("link", name="ui echo")).to_have_count(0)

    await ui.run(delete)
    for sim in sims:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_an_image_of_the_library_rolled_out_from_the_firmware_page(
        server, admin: Client, ui, tmp_path):
    sims = await _tagged_fleet(server, admin, "uifw", 2)
    fw = make_bin(str(tmp_path / "rollout.bin"), 20_000)
    await ui.run(sign_in, admin.key)

    def add_and_roll_out(page: Page) -> None:
        page.get_by_role("link", name="Firmware").click()
        expect(page.get_by_role("heading", level=1, name="Firmware")).to_be_visible()
        page.get_by_label("Firmware file").set_input_files(fw)
        page.get_by_role("button", name="Add to the library").click()
        expect(page.get_by_text(re.compile(r"^Added rollout\.bin"))).to_be_visible()
        accessible(page)
        page.get_by_role("button", name="Start a rollout of rollout.bin").first.click()
        expect(page.get_by_role("heading", level=1, name="Jobs")).to_be_visible()
        expect(page.get_by_label("Action")).to_have_value("firmware")
        page.get_by_label("Job name").fill("ui rollout")
        page.get_by_label("Devices (a device query)").fill('shadow.tags.run = "uifw"')
        expect(page.get_by_text("2 devices match.")).to_be_visible()
        page.get_by_label("Phases (cumulative percentages)").fill("50, 100")
        page.get_by_role("button", name="Create job").click()
        expect(page.get_by_role("heading", level=1, name="Job ui rollout")).to_be_visible()
        expect(page.get_by_role("progressbar", name="Succeeded: 2 of 2")).to_be_visible(timeout=40_000)
        expect(page.get_by_text("completed", exact=True)).to_be_visible()
        table = page.get_by_role("table", name="The devices of this job")
        expect(table.get_by_text("Succeeded")).to_have_count(2)
        expect(table).to_contain_text('"state":"committed"')
        accessible(page)

    await ui.run(add_and_roll_out)
    await ui.shot("rollout-completed")
    assert all(s.ota_committed for s in sims)
    for sim in sims:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_a_job_cancelled_with_force_from_its_page(server, admin: Client, ui):
    sims = await _tagged_fleet(server, admin, "uiforce", 2)
    reply = await admin.post("/api/v2/jobs", {
        "name": "ui slow", "target": {"where": 'shadow.tags.run = "uiforce"'},
        "concurrency": 1,
        "action": {"type": "rpc", "method": "Sim.Sleep", "params": {"seconds": 3}}})
    assert reply.status in (200, 201), reply
    job_id = reply.body["id"]
    await ui.run(sign_in, admin.key)

    def cancel(page: Page) -> None:
        page.goto("/#/jobs/%s" % job_id)
        expect(page.get_by_role("heading", level=1, name="Job ui slow")).to_be_visible()
        page.get_by_role("button", name="Cancel with force").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("what they report later is not recorded")
        dialog.get_by_role("button", name="Cancel with force").click()
        expect(page.get_by_role("progressbar", name="Cancelled: 2 of 2")).to_be_visible(timeout=10_000)
        expect(page.get_by_role("button", name="Cancel with force")).to_have_count(0)
        accessible(page)

    await ui.run(cancel)
    done = (await admin.get("/api/v2/jobs/" + job_id)).body
    assert done["state"] == "cancelled" and done["reason"]["force"] is True
    for sim in sims:
        await sim.stop()
