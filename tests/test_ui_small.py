"""
The smaller dashboard items of issue 19 (item 9), in Chromium against a
real dashd: the audit log in words with filters by device, key and action;
the restricted-key form that defaults to no device and refuses a device
with no rights; the provisioning dialog that explains mDash-library
devices, with boxes that show all of their text (desktop and phone).
Screenshots go to test-artifacts/ui/.
"""

from __future__ import annotations


import pytest_twisted
from playwright.sync_api import Page, expect

from browser import UI
from support import SECRETS, Client
from test_ui import accessible, no_horizontal_overflow, sign_in


@pytest_twisted.ensureDeferred
async def test_audit_log_in_words_with_filters(server, admin: Client, ui: UI):
    device_id, _ = await admin.register("words-boiler")
    other_id, _ = await admin.register("words-kettle")
    await admin.post("/api/v2/devices/" + device_id, {"name": "words-boiler 2"})
    await admin.post("/api/v2/devices/" + device_id,
                     {"shadow": {"state": {"desired": {"led": True}}}})
    await admin.post("/api/v2/devices/%s/rpc/Sys.Reboot" % other_id, {})
    reply = await admin.post("/api/v2/keys", {"kind": "read-only", "name": "words-reader"})
    SECRETS.add(reply.body["key"])
    await ui.run(sign_in, admin.key)

    def words(page: Page) -> None:
        page.get_by_role("link", name="Audit log").click()
        rows = page.get_by_role("table", name="Audit log of this account, newest first").locator("tbody tr")
        expect(rows.first).to_contain_text("created an API key")
        expect(rows.nth(1)).to_contain_text("tried: called Sys.Reboot on words-kettle")
        expect(rows.nth(2)).to_contain_text("changed desired.led of words-boiler 2")
        expect(rows.nth(3)).to_contain_text("renamed words-boiler to words-boiler 2")
        # The request itself stays, under the words.
        expect(rows.nth(3)).to_contain_text("POST /api/v2/devices/" + device_id)
        accessible(page)
        page.get_by_label("Device").select_option(label="words-boiler 2")
        visible = page.locator("table.audit tbody tr:visible")
        expect(visible).to_have_count(2)
        page.get_by_label("Action").select_option(label="Renamed devices")
        expect(visible).to_have_count(1)
        expect(page.get_by_text(" entries loaded match.")).to_have_text(
            "1 of the %d entries loaded match." % rows.count())
        page.get_by_label("Device").select_option(label="All devices")
        page.get_by_label("Action").select_option(label="Device calls")
        expect(visible).to_have_count(1)
        expect(visible).to_contain_text("Sys.Reboot")
        page.get_by_label("Action").select_option(label="All actions")
        page.get_by_label("Key").select_option(index=1)
        expect(visible).to_have_count(rows.count())  # one key did it all

    await ui.run(words)
    await ui.shot("audit-in-words")


@pytest_twisted.ensureDeferred
async def test_restricted_key_form_chooses_no_device_for_you(server, admin: Client, ui: UI):
    device_id, _ = await admin.register("form-first")
    await ui.run(sign_in, admin.key)

    def form(page: Page) -> None:
        page.get_by_role("link", name="API keys").click()
        page.get_by_label("Restricted").check()
        scope = page.get_by_role("group", name="What the restricted key may use")
        expect(scope.get_by_label("Device")).to_have_value("")
        page.get_by_role("button", name="Create key").click()
        expect(page.get_by_role("alert")).to_have_text(
            "Choose the device for each row of the restricted key, or remove the row.")
        expect(scope.get_by_label("Device")).to_be_focused()
        scope.get_by_label("Device").select_option(device_id)
        page.get_by_role("button", name="Create key").click()
        expect(page.get_by_role("alert")).to_contain_text("The key may do nothing with form-first")
        expect(scope.get_by_label("Shadow keys it may read")).to_be_focused()
        scope.get_by_role("button", name="Remove this device").click()
        page.get_by_role("button", name="Create key").click()
        expect(page.get_by_role("alert")).to_have_text(
            "A restricted key needs at least one device: add one.")
        accessible(page)

    await ui.run(form)


def provisioning(page: Page) -> None:
    page.get_by_role("button", name="Add device").click()
    page.get_by_label("Name (optional)").fill("dialog-sensor")
    page.get_by_role("button", name="Register").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_role("heading", name="Device registered")).to_be_visible()
    expect(dialog).to_contain_text("A device with the mDash library (Arduino, ESP-IDF): the token is its device password")
    token = dialog.get_by_label("Device token", exact=True).input_value()
    SECRETS.add(token)
    sketch = dialog.get_by_label("mDash library (Arduino, ESP-IDF) sketch lines", exact=True)
    assert sketch.input_value() == 'mDashBegin("%s");\nmDashSetURL("ws://%s/api/v2/rpc");' % (
        token, page.evaluate("location.host"))
    # Every box shows all of its text: nothing to scroll inside it.
    for label in ("Provisioning command", "mDash library (Arduino, ESP-IDF) sketch lines"):
        box = dialog.get_by_label(label, exact=True)
        scroll, client = box.evaluate("t => [t.scrollHeight, t.clientHeight]")
        assert scroll <= client + 1, (label, scroll, client)
    no_horizontal_overflow(page)


@pytest_twisted.ensureDeferred
async def test_provisioning_dialog_explains_both_kinds_of_device(server, admin: Client, ui: UI,
                                                                  ):
    await ui.run(sign_in, admin.key)
    await ui.run(provisioning)
    await ui.shot("provisioning-dialog")
    await ui.run(lambda page: page.get_by_role("button", name="Done").click())


@pytest_twisted.ensureDeferred
async def test_provisioning_dialog_at_phone_width(server, admin: Client, phone: UI):
    await phone.run(sign_in, admin.key)
    await phone.run(provisioning)
    await phone.shot("phone-provisioning-dialog")
    await phone.run(lambda page: page.get_by_role("button", name="Done").click())
