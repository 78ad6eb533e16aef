"""
What the browser tests are made of: Debian's headless Chromium driven by
Playwright's sync API, in a thread of its own.

The tests are pytest-twisted tests: the reactor runs in the test's thread,
so that simulated devices and the REST client go on while the browser
waits for something to appear. Every Playwright object lives in the
browser thread; a test hands it steps, plain functions of the page, with
C{await ui.run(step)}.

Each test gets a fresh browser context (no storage, no cookies) and one
page whose console errors, uncaught exceptions, failed requests and HTTP
errors are recorded; when the test ends, anything that the test did not
declare expected (C{ui.allow(409, "/api/v2/devices/")}) fails it. A
screenshot of the page is kept in test-artifacts/ui/ at the end of each
test, besides those the test takes (C{ui.shot("devices")}).
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from support import within

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "ui"
# How long a step may take before the test fails (Playwright's own waits
# are shorter and say what they waited for).
STEP_SECONDS = 60
# The phone width of the tests (an iPhone 12-15's viewport).
PHONE = {"width": 390, "height": 844}
WAIT_MS = 10_000

_FAILED_RESOURCE = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


class BrowserThread:
    """One thread that owns Playwright and Chromium; jobs run in order."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="browser", daemon=True)
        self._thread.start()
        self.playwright: Any = None
        self.browser: Any = None

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # handed to the waiting test
                future.set_exception(e)

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((fn, args, future))
        return future

    def call_sync(self, fn: Callable[..., Any], *args: Any, timeout: float = STEP_SECONDS) -> Any:
        """For fixtures, when the reactor is not running."""
        return self.submit(fn, *args).result(timeout)

    def call(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """For tests: a Deferred that fires in the reactor thread."""
        d: Deferred[Any] = Deferred()

        def done(future: concurrent.futures.Future[Any]) -> None:
            error = future.exception()
            if error is None:
                reactor.callFromThread(d.callback, future.result())
            else:
                reactor.callFromThread(d.errback, Failure(error, type(error), error.__traceback__))

        self.submit(fn, *args).add_done_callback(done)
        return within(d, STEP_SECONDS)

    def start_browser(self) -> None:
        def start() -> None:
            from playwright.sync_api import expect, sync_playwright

            expect.set_options(timeout=WAIT_MS)
            self.playwright = sync_playwright().start()
            # launch() gives Chromium a fresh, temporary user-data dir.
            self.browser = self.playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )

        self.call_sync(start)

    def stop(self) -> None:
        def stop() -> None:
            if self.browser is not None:
                self.browser.close()
            if self.playwright is not None:
                self.playwright.stop()

        try:
            self.call_sync(stop)
        finally:
            self._jobs.put(None)
            self._thread.join(30)


@dataclass
class Allowance:
    status: int
    path: str
    used: int = 0


@dataclass
class UI:
    """One page in a fresh browser context, watched for errors."""

    thread: BrowserThread
    base_url: str
    name: str
    viewport: dict[str, int] = field(default_factory=lambda: {"width": 1280, "height": 900})
    context: Any = None
    page: Any = None
    problems: list[str] = field(default_factory=list)
    allowances: list[Allowance] = field(default_factory=list)
    # Substrings of console errors or failed requests the test provokes.
    failures_allowed: list[str] = field(default_factory=list)
    # (url, status) of every HTTP error the page received, expected or not.
    http_errors: list[tuple[str, int]] = field(default_factory=list)
    console_failures: list[tuple[str, int, str]] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)
    closing: bool = False
    shots: list[str] = field(default_factory=list)

    def open(self) -> None:
        def open_page() -> None:
            self.context = self.thread.browser.new_context(
                base_url=self.base_url,
                viewport=self.viewport,
                permissions=["clipboard-read", "clipboard-write"],
            )
            self.context.set_default_timeout(WAIT_MS)
            page = self.context.new_page()
            page.on("console", self._console)
            page.on("pageerror", lambda e: self._problem("uncaught exception in the page: %s" % e))
            page.on("requestfailed", self._request_failed)
            page.on("response", self._response)
            page.on("crash", lambda _: self._problem("the page crashed"))
            page.on("websocket", self._websocket)
            self.page = page

        self.thread.call_sync(open_page)

    # What the page does wrong

    def _problem(self, text: str) -> None:
        if self.closing or any(allowed in text for allowed in self.failures_allowed):
            return
        self.problems.append(text)

    def _console(self, message: Any) -> None:
        if message.type not in ("error", "assert"):
            return
        m = _FAILED_RESOURCE.search(message.text)
        if m:
            # Chromium logs every HTTP error a fetch gets; judged at the end
            # against the responses the test said it expected.
            url = (message.location or {}).get("url", "")
            self.console_failures.append((url, int(m.group(1)), message.text))
            return
        self._problem("console %s: %s" % (message.type, message.text))

    def _websocket(self, socket: Any) -> None:
        # The key stays out of URLs (console errors and proxies show them):
        # the notification stream opens with a single-use ticket.
        path, _, query = socket.url.partition("?")
        self.websockets.append(path)
        if "access_token" in query or "ticket=nt_" not in query:
            self._problem("the page opened %s without a ticket, or with a key in its URL" % path)

    def _request_failed(self, request: Any) -> None:
        self._problem("request failed: %s %s (%s)" % (request.method, request.url, request.failure))

    def _response(self, response: Any) -> None:
        if response.status < 400:
            return
        url = response.url
        self.http_errors.append((url, response.status))
        for allowance in self.allowances:
            if allowance.status == response.status and allowance.path in url:
                allowance.used += 1
                return
        self._problem("unexpected HTTP %d for %s %s" % (response.status, response.request.method, url))

    def allow(self, status: int, path: str) -> None:
        """The page will get C{status} from a URL containing C{path} (and
        the test fails if it never does)."""
        self.allowances.append(Allowance(status, path))

    def allow_failure(self, text: str) -> None:
        """Console errors and failed requests that contain C{text} are
        expected (e.g. while the test has dashd stopped)."""
        self.failures_allowed.append(text)

    def unexplained(self) -> list[str]:
        found = list(self.problems)
        for allowance in self.allowances:
            if not allowance.used:
                found.append("the test expected HTTP %d from a URL with %s, which never came"
                             % (allowance.status, allowance.path))
        for url, status, text in self.console_failures:
            if (url, status) not in self.http_errors and not any(
                allowed in text for allowed in self.failures_allowed
            ):
                found.append("console error: %s (%s)" % (text, url))
        return found

    # Driving it

    def run(self, step: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run C{step(page, *args)} in the browser thread."""
        return self.thread.call(step, self.page, *args)

    def shot(self, name: str) -> Deferred[Any]:
        return self.thread.call(self._shot, name)

    def _shot(self, name: str) -> str:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / ("%s.png" % name)
        self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(str(path))
        return str(path)

    def close(self) -> None:
        def close_page() -> None:
            try:
                self._shot("%s--end" % self.name)
            except Exception as e:  # the page may have crashed: say so below
                self.problems.append("no final screenshot: %s" % e)
            self.closing = True
            self.context.close()

        self.thread.call_sync(close_page)


def artifact_name(nodeid: str) -> str:
    name = nodeid.split("::")[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def open_ui(thread: BrowserThread, base_url: str, nodeid: str,
            viewport: dict[str, int] | None) -> UI:
    """A new page for the test C{nodeid}, at C{viewport} (None: desktop)."""
    ui = UI(thread, base_url, artifact_name(nodeid))
    if viewport:
        ui.viewport = viewport
    ui.open()
    return ui


def chromium_missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return "%s is missing: `make test` installs it (apt-get install chromium)" % CHROMIUM
    return None
