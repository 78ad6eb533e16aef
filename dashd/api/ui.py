"""
The web dashboard: ``GET /`` serves its page and ``GET /ui/...`` its
assets (plain HTML, CSS and JavaScript modules shipped inside the package in
``dashd/ui/``; no CDN, no build step). The page talks to the REST API and
the notification stream like any other client, with the API key the user
signs in with, kept in the tab's sessionStorage.

Every UI response carries a Content-Security-Policy without
``'unsafe-inline'`` (the page has no inline script or style), is never
framed, sends no referrer and may not be sniffed as another type.

The assets are read once, when dashd starts: only the files found then are
ever served, so no request path can reach anything else on disk.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

from dashd import __version__
from dashd.api.base import ApiBase, app
from dashd.domain.errors import NotFound

UI_PACKAGE = "dashd.ui"

CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".webmanifest": b"application/manifest+json",
}

CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    b"form-action 'self'; frame-ancestors 'none'"
)

SECURITY_HEADERS = {
    b"content-security-policy": CONTENT_SECURITY_POLICY,
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
}


class Asset:
    def __init__(self, body: bytes, content_type: bytes) -> None:
        self.body = body
        self.content_type = content_type
        self.etag = b'"%s"' % hashlib.sha256(body).hexdigest()[:32].encode("ascii")


def load_assets(package: str = UI_PACKAGE) -> dict[str, Asset]:
    """Every servable file of the UI package, by its path below it."""
    assets: dict[str, Asset] = {}

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            name = prefix + child.name
            if child.is_dir():
                if not child.name.startswith((".", "_")):
                    walk(child, name + "/")
                continue
            suffix = "." + child.name.rsplit(".", 1)[-1] if "." in child.name else ""
            content_type = CONTENT_TYPES.get(suffix)
            if content_type is not None:
                assets[name] = Asset(child.read_bytes(), content_type)

    walk(resources.files(package), "")
    # The page shows which dashd serves it.
    index = assets["index.html"]
    assets["index.html"] = Asset(
        index.body.replace(b"{{version}}", __version__.encode("ascii")), index.content_type
    )
    return assets


class UiRoutes(ApiBase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ui_assets = load_assets()

    def _serve(self, request: Any, asset: Asset) -> bytes:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"content-type", asset.content_type)
        # Revalidate every time, so an upgraded dashd never serves stale code.
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"etag", asset.etag)
        if asset is self.ui_assets.get("sw.js"):
            # The service worker serves the whole dashboard (js/offline.js).
            request.setHeader(b"service-worker-allowed", b"/")
        if request.getHeader(b"if-none-match") == asset.etag:
            request.setResponseCode(304)
            return b""
        return asset.body

    @app.route("/", methods=["GET", "HEAD"])
    def ui_page(self, request: Any) -> bytes:
        return self._serve(request, self.ui_assets["index.html"])

    @app.route("/ui/<path:name>", methods=["GET", "HEAD"])
    def ui_asset(self, request: Any, name: str) -> bytes:
        asset = self.ui_assets.get(name)
        if asset is None or name == "index.html":
            raise NotFound("no such file: /ui/%s" % name)
        return self._serve(request, asset)
