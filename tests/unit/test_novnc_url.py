"""The noVNC page URL of a VNC console (hvd/api/novnc.py web_url): behind TLS, under a base path, on IPv6."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from hvd.api.novnc import web_url

WS_PATH = "/v1/console/vnc"


@pytest.mark.parametrize(("ws_url", "page", "host", "port", "encrypt", "path"), [
    ("ws://10.0.0.5:8774/v1/console/vnc?token=a-b_c", "http://10.0.0.5:8774/novnc/vnc_lite.html",
     "10.0.0.5", "8774", "0", "v1/console/vnc?token=a-b_c"),
    ("wss://console.example/hvd/v1/console/vnc?token=t", "https://console.example/hvd/novnc/vnc_lite.html",
     "console.example", "443", "1", "hvd/v1/console/vnc?token=t"),
    ("ws://[fd00::5]:9000/v1/console/vnc?token=t", "http://[fd00::5]:9000/novnc/vnc_lite.html",
     "[fd00::5]", "9000", "0", "v1/console/vnc?token=t"),
])
def test_web_url(ws_url: str, page: str, host: str, port: str, encrypt: str, path: str) -> None:
    url = web_url(ws_url, WS_PATH)
    assert url.split("#")[0] == page
    fragment = urlsplit(url).fragment
    # noVNC's vnc_lite.html reads a setting only after ? or &: the first one is autoconnect, for vnc.html alone
    assert fragment.startswith("autoconnect=true&")
    assert dict(parse_qsl(fragment)) == {"autoconnect": "true", "host": host, "port": port, "encrypt": encrypt,
                                         "path": path}
