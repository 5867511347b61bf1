"""noVNC served by the daemon (hvd/api/novnc.py): the VNC remote-console answer's web_url opens the
console WebSocket with its token, the page and its modules load without an API token, nothing outside
the directory (traversal, symlinks) and no directory listing is served, and with noVNC off there is no
web_url and no /novnc/. Fake driver, real HTTP; the served files are Debian's package novnc."""

from __future__ import annotations

import http.client
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from hvd.api import novnc
from tests.functional.compute_helpers import make_qcow2
from tests.functional.conftest import Client, LiveServer, start_live_server
from tests.functional.test_consoles_fake import rfb_handshake

NOVNC_DIR = Path("/usr/share/novnc")
TRAVERSALS = ("/novnc/../etc/passwd", "/novnc/core/../../../../etc/passwd", "/novnc/..%2f..%2f..%2fetc/passwd",
              "/novnc/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/novnc/%2fetc%2fpasswd", "/novnc//etc/passwd",
              "/novnc/..%5c..%5c..%5cetc/passwd")


def _serve(tmp: pytest.TempPathFactory, novnc_dir: str) -> Iterator[tuple[LiveServer, Client, str]]:
    """A live API whose [compute] novnc_dir is ``novnc_dir``, an admin client, and a running server's id."""
    server, thread, stop = start_live_server(tmp.mktemp("novnc") / "hvd", extra=f'novnc_dir = "{novnc_dir}"')
    try:
        admin = server.admin()
        image = admin.call("POST", "/v1/images", {"name": "base", "disk_format": "qcow2"}).body
        disk = make_qcow2(server.base / "base.qcow2").read_bytes()
        assert admin.call("PUT", f"/v1/images/{image['id']}/file", data=disk,
                          headers={"Content-Type": "application/octet-stream"}).status == 204
        assert admin.call("POST", "/v1/flavors", {"name": "m1.tiny", "vcpus": 1, "ram_mb": 128,
                                                  "disk_gb": 1}).status == 201
        r = admin.call("POST", "/v1/servers?wait=true", {"name": "vnc1", "flavor": "m1.tiny", "image": "base"})
        assert r.status == 202 and r.body["status"] == "ACTIVE", r.body
        yield server, admin, r.body["id"]
    finally:
        server.loop.call_soon_threadsafe(stop.set)
        thread.join(30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Client, str]]:
    if not (NOVNC_DIR / novnc.PAGE).is_file():
        pytest.skip(f"noVNC is not installed ({NOVNC_DIR / novnc.PAGE}): install the Debian package novnc"
                    " (scripts/setup.sh does)")
    yield from _serve(tmp_path_factory, str(NOVNC_DIR))


@pytest.fixture(scope="module")
def unserved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Client, str]]:
    yield from _serve(tmp_path_factory, str(tmp_path_factory.getbasetemp() / "no-such-novnc"))


def vnc_console(admin: Client, sid: str) -> dict[str, Any]:
    r = admin.call("POST", f"/v1/servers/{sid}/remote-console", {"protocol": "vnc"})
    assert r.status == 200, r.body
    return dict(r.body["remote_console"])


def raw_get(url: str, path: str, token: str | None = None) -> tuple[int, str, bytes]:
    """GET ``path`` sent as is (clients normalise ``..`` away): status, content type, body."""
    conn = http.client.HTTPConnection(urlsplit(url).netloc, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


async def test_web_url_opens_the_console_websocket(served: tuple[LiveServer, Client, str]) -> None:
    server, admin, sid = served
    console = vnc_console(admin, sid)
    token = console["url"].split("?token=", 1)[1]
    page = urlsplit(console["web_url"])
    assert (page.scheme, page.netloc, page.path, page.query) == ("http", urlsplit(server.url).netloc,
                                                                 "/novnc/vnc_lite.html", "")
    settings = dict(parse_qsl(page.fragment))  # the fragment: browsers never send the token to a server
    assert settings == {"autoconnect": "true", "host": "127.0.0.1", "port": str(urlsplit(server.url).port),
                        "encrypt": "0", "path": f"v1/console/vnc?token={token}"}
    # the WebSocket URL noVNC builds from them is the console's, and it works
    ws_url = f"ws://{settings['host']}:{settings['port']}/{settings['path']}"
    assert ws_url == console["url"]
    async with aiohttp.ClientSession() as http_, http_.ws_connect(ws_url, protocols=("binary",)) as ws:
        assert (await rfb_handshake(ws))[0] == 640
    assert vnc_console(admin, sid)["web_url"] != console["web_url"]  # a new token each time
    serial = admin.call("POST", f"/v1/servers/{sid}/remote-console", {"protocol": "serial"}).body
    assert serial["remote_console"]["web_url"] is None


def test_the_page_and_its_modules_load_without_an_api_token(served: tuple[LiveServer, Client, str]) -> None:
    server, admin, sid = served
    anonymous = server.client()
    r = anonymous.call("GET", urlsplit(vnc_console(admin, sid)["web_url"]).path)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html") and "noVNC" in r.body
    # browsers run ES modules only when served with a JavaScript type
    r = anonymous.call("GET", "/novnc/core/rfb.js")
    assert r.status == 200 and "javascript" in r.headers["Content-Type"], r.headers
    # Debian's one symlink (vnc_auto.html -> vnc.html) stays inside the directory: served
    assert anonymous.call("GET", "/novnc/vnc_auto.html").status == 200


@pytest.mark.parametrize("path", TRAVERSALS)
def test_nothing_outside_the_directory_is_served(served: tuple[LiveServer, Client, str], path: str) -> None:
    server, admin, _ = served
    for token in (None, admin.token):  # without one, a path normalised out of /novnc/ needs a token: 401
        status, _, body = raw_get(server.url, path, token)
        assert status in ((401, 403, 404) if token is None else (403, 404)), (path, status, body[:200])
        assert b"root:" not in body


def test_no_directory_listing_nor_api_behind_the_public_prefix(served: tuple[LiveServer, Client, str]) -> None:
    server, _, _ = served
    for path in ("/novnc/../v1/flavors", "/novnc/%2e%2e/v1/flavors"):  # public prefix, not public API
        assert raw_get(server.url, path)[0] in (401, 404), path
    for path in ("/novnc/", "/novnc/core/", "/novnc/app/images/"):
        status, _, body = raw_get(server.url, path)
        assert status in (403, 404) and b"rfb.js" not in body and b"<a href" not in body, (path, status)


def test_novnc_off_when_its_directory_is_missing(unserved: tuple[LiveServer, Client, str]) -> None:
    server, admin, sid = unserved
    console = vnc_console(admin, sid)
    assert console["web_url"] is None and "/v1/console/vnc?token=" in console["url"]
    for token in (None, admin.token):
        assert raw_get(server.url, "/novnc/vnc_lite.html", token)[0] == 404
        assert raw_get(server.url, "/novnc/", token)[0] == 404


async def test_symlinks_out_of_the_directory_are_not_followed(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A tree of our own (whatever the installed package holds): a link to a file outside is refused,
    one to a file inside is served; an empty setting or a tree without the page is off (logged)."""
    root = tmp_path / "novnc"
    (root / "core").mkdir(parents=True)
    (root / novnc.PAGE).write_text("<html>noVNC</html>")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "inside.html").symlink_to(novnc.PAGE)
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    (root / "core" / "escape").symlink_to(tmp_path)
    caplog.set_level(logging.WARNING, logger="hvd.api.novnc")
    assert not novnc.install(web.Application(), "")
    assert not novnc.install(web.Application(), str(root / "core"))
    assert [r.getMessage() for r in caplog.records] == [
        f"noVNC is off: {root / 'core'} has no {novnc.PAGE} ([compute] novnc_dir; on Debian: apt-get install novnc)"]
    app = web.Application()
    assert novnc.install(app, str(root)) and app[novnc.SERVED]
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http_:
            for path, wanted in (("inside.html", 200), ("escape.txt", 404), ("core/escape/secret.txt", 404),
                                 ("core/", 403)):
                async with http_.get(server.make_url(f"/novnc/{path}")) as resp:
                    assert resp.status == wanted, path
                    assert "secret" not in await resp.text()
    finally:
        await server.close()
