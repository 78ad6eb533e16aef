"""
Charts over time on the device page (dashd/ui/js/charts.js, uPlot served by
dashd), in Chromium against a real dashd with simulated devices: ranges
(last hour, day, week, custom), each chart one request of buckets, zoom by
dragging and back, several devices and keys on one chart, a restricted
key's chart of what it may read, and phone width. Screenshots go to
test-artifacts/ui/.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest_twisted
from playwright.sync_api import Page, expect

from browser import UI
from support import Client, connect_device, device_online, within
from test_ui import (
    PHONE, accessible, new_key, no_horizontal_overflow, open_device, section, sign_in,
)


def charts(page: Page):
    return section(page, "Charts")


def chart_requests(page: Page) -> list:
    """The data requests the page made so far (their query arguments)."""
    return [parse_qs(urlsplit(u).query) for u in page.evaluate(
        "performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => n.includes('/api/v2/data?'))")]


async def _devices(admin: Client, server, suffix: str):
    a_id, a_token = await admin.register("chart-greenhouse" + suffix)
    b_id, b_token = await admin.register("chart-cellar" + suffix)
    for device_id in (a_id, b_id):
        reply = await admin.post("/api/v2/devices/" + device_id, {"shadow": {"tags": {
            "save": ["temp", "hum", "door"], "units": {"hum": "%"}}}})
        assert reply.status == 200, reply
    a = await connect_device(server, a_token)
    b = await connect_device(server, b_token)
    await device_online(admin, a_id)
    await device_online(admin, b_id)
    for i in range(5):
        await within(a.report({"temp": 20 + i, "hum": 50 - i, "door": "open"}))
        await within(b.report({"temp": 10 - i}))
    return (a_id, a), (b_id, b)


@pytest_twisted.ensureDeferred
async def test_charts_ranges_zoom_and_several_devices(server, admin: Client, ui: UI):
    (a_id, a), (b_id, b) = await _devices(admin, server, "")
    await ui.run(sign_in, admin.key)

    def last_hour(page: Page) -> None:
        open_device(page, a_id, "chart-greenhouse")
        box = charts(page)
        expect(box.get_by_role("radio", name="Last hour")).to_be_checked()
        legend = box.locator("ul.chart-legend li")
        expect(legend).to_have_count(2)
        expect(legend.nth(0)).to_have_text("hum (%): 5 points, lowest 46, highest 50, average 48")
        expect(legend.nth(1)).to_have_text("temp: 5 points, lowest 20, highest 24, average 22")
        # Drawn by uPlot on a canvas; said in words to screen readers.
        expect(box.locator(".chart-plot canvas")).to_have_count(1)
        chart = box.get_by_role("img", name=re.compile("^Chart, "))
        expect(chart).to_have_attribute("aria-label", re.compile("temp: 5 points, lowest 20"))
        expect(box.locator("figcaption")).to_contain_text("Not numbers, counted only: door.")
        [asked] = chart_requests(page)
        assert asked["device"] == [a_id] and int(asked["bucket"][0]) <= 10, asked
        accessible(page)

    await ui.run(last_hour)
    await ui.shot("charts-last-hour")

    def week(page: Page) -> None:
        box = charts(page)
        box.get_by_role("radio", name="Last week").check()
        expect(box.locator("figcaption")).to_contain_text(re.compile(r"averages of \d+ min buckets"))
        asked = chart_requests(page)[-1]
        span = float(asked["to"][0]) - float(asked["from"][0])
        assert abs(span - 7 * 86400) < 5 and 600 <= int(asked["bucket"][0]) <= 3600, asked
        # One request for the week's chart.
        assert len(chart_requests(page)) == 2
        expect(box.locator("ul.chart-legend li")).to_have_count(2)

    await ui.run(week)

    def keys_and_devices(page: Page) -> None:
        box = charts(page)
        box.get_by_role("checkbox", name="hum").uncheck()
        expect(box.locator("ul.chart-legend li")).to_have_count(1)
        box.get_by_label("Compare with").select_option(label="chart-cellar")
        box.get_by_role("button", name="Add to chart").click()
        legend = box.locator("ul.chart-legend li")
        expect(legend).to_have_text([
            "chart-greenhouse · temp: 5 points, lowest 20, highest 24, average 22",
            "chart-cellar · temp: 5 points, lowest 6, highest 10, average 8"])
        asked = chart_requests(page)[-1]
        assert asked["device"] == ["%s,%s" % (a_id, b_id)], asked
        box.get_by_role("checkbox", name="Show min and max").check()
        expect(box.locator("figcaption")).to_contain_text("with their min and max (dashed)")
        accessible(page)

    await ui.run(keys_and_devices)
    await ui.shot("charts-two-devices")

    def zoom(page: Page) -> None:
        box = charts(page)
        before = len(chart_requests(page))
        over = box.locator(".u-over")
        area = over.bounding_box()
        y = area["y"] + area["height"] / 2
        page.mouse.move(area["x"] + area["width"] * 0.6, y)
        page.mouse.down()
        page.mouse.move(area["x"] + area["width"] * 0.8, y, steps=5)
        page.mouse.move(area["x"] + area["width"] * 0.99, y, steps=5)
        page.mouse.up()
        expect(box.get_by_role("button", name="Zoom out")).to_be_enabled()
        asked = chart_requests(page)[-1]
        assert len(chart_requests(page)) == before + 1
        span = float(asked["to"][0]) - float(asked["from"][0])
        assert 0.3 * 86400 * 7 < span < 0.45 * 86400 * 7, span
        # A finer bucket for the zoomed range.
        assert int(asked["bucket"][0]) < int(chart_requests(page)[-2]["bucket"][0]), asked
        box.get_by_role("button", name="Zoom out").click()
        expect(box.get_by_role("button", name="Zoom out")).to_be_disabled()
        asked = chart_requests(page)[-1]
        assert abs(float(asked["to"][0]) - float(asked["from"][0]) - 7 * 86400) < 60

    await ui.run(zoom)

    def custom(page: Page) -> None:
        box = charts(page)
        box.get_by_role("radio", name="Custom").check()
        expect(box.get_by_label("From", exact=True)).to_be_focused()
        box.get_by_label("From", exact=True).fill("2020-01-01T00:00")
        box.get_by_label("To", exact=True).fill("2020-01-02T00:00")
        box.get_by_role("button", name="Show").click()
        expect(box.get_by_text(re.compile("^No stored data from "))).to_be_visible()
        asked = chart_requests(page)[-1]
        assert float(asked["to"][0]) - float(asked["from"][0]) == 86400
        # Back to data: the custom range that holds it.
        box.get_by_label("From", exact=True).fill("2020-01-01T00:00")
        box.get_by_label("To", exact=True).fill("2099-01-01T00:00")
        box.get_by_role("button", name="Show").click()
        expect(box.locator("ul.chart-legend li")).to_have_count(2)
        accessible(page)

    await ui.run(custom)
    await a.stop()
    await b.stop()


@pytest_twisted.ensureDeferred
async def test_a_restricted_key_charts_what_it_may_read(server, admin: Client, ui: UI):
    (a_id, a), (b_id, b) = await _devices(admin, server, "-r")
    key = await new_key(admin, kind="restricted",
                        scope={"devices": {a_id: {"read": ["temp"]}}})
    await ui.run(sign_in, key)

    def restricted(page: Page) -> None:
        open_device(page, a_id, "chart-greenhouse-r")
        box = charts(page)
        expect(box.locator("ul.chart-legend li")).to_have_text(
            ["temp: 5 points, lowest 20, highest 24, average 22"])
        # Its one device: nothing to compare with.
        expect(box.get_by_label("Compare with")).to_be_hidden()
        expect(page.get_by_role("region", name="Stored data")).to_have_count(0)
        accessible(page)

    await ui.run(restricted)
    await ui.shot("charts-restricted")
    await a.stop()
    await b.stop()


@pytest_twisted.ensureDeferred
async def test_charts_at_phone_width(server, admin: Client, phone: UI):
    (a_id, a), (b_id, b) = await _devices(admin, server, "-p")
    await phone.run(sign_in, admin.key)

    def small(page: Page) -> None:
        open_device(page, a_id, "chart-greenhouse-p")
        box = charts(page)
        expect(box.locator("ul.chart-legend li")).to_have_count(2)
        width = box.locator(".chart-plot canvas").evaluate("c => c.getBoundingClientRect().width")
        assert 200 <= width <= PHONE["width"], width
        box.scroll_into_view_if_needed()
        no_horizontal_overflow(page)
        accessible(page)

    await phone.run(small)
    await phone.shot("phone-charts")
    await a.stop()
    await b.stop()
