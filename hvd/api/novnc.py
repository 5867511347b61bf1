"""noVNC in the browser: its static files at ``/novnc/``, and the page URL of a VNC console.

As Nova's novncproxy does, the daemon serves noVNC (Debian's package ``novnc``, 1.3, under
``[compute] novnc_dir``) itself, so a remote-console answer for VNC can carry a ``web_url`` that opens
the console with nothing but a browser. The files are public (a browser cannot add an API token to
the page's requests; the console token in the page URL is what opens the console), read-only, with
no directory listing, and no path resolving outside the directory is served (``follow_symlinks=False``:
aiohttp resolves each path and refuses one outside the root; Debian's only symlink, ``vnc_auto.html``
-> ``vnc.html``, stays inside).
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote, urlsplit

from aiohttp import web

log = logging.getLogger(__name__)

PREFIX = "/novnc"
PAGE = "vnc_lite.html"  # noVNC's minimal client: connects on load, Ctrl-Alt-Del button (Nova's default page too)
SERVED = web.AppKey("hvd.novnc_served", bool)  # whether this app serves noVNC (so web_url is answered)


def install(app: web.Application, directory: str) -> bool:
    """Serve ``directory`` at ``PREFIX`` when it holds noVNC; False (off) when ``directory`` is empty,
    or (logged once, not an error: the package is optional) when it is missing or holds no ``PAGE``."""
    app[SERVED] = False
    if not directory:
        return False
    if not (Path(directory) / PAGE).is_file():
        log.warning("noVNC is off: %s has no %s ([compute] novnc_dir; on Debian: apt-get install novnc)",
                    directory, PAGE)
        return False
    app.router.add_static(PREFIX, directory, name="novnc", show_index=False, follow_symlinks=False)
    app[SERVED] = True
    return True


def web_url(ws_url: str, ws_path: str) -> str:
    """The noVNC page that opens the console WebSocket ``ws_url`` (``ws(s)://HOST[/BASE]<ws_path>?token=T``):
    ``http(s)://HOST[/BASE]/novnc/vnc_lite.html#autoconnect=true&host=..&port=..&encrypt=..&path=..``.

    The settings are in the fragment, which browsers never send: the token stays out of request logs,
    proxies and Referer headers. noVNC 1.3 reads them there as from the query: vnc_lite.html matches
    ``[?&]name=`` (hence ``autoconnect``, which only vnc.html reads, comes first), vnc.html's
    ``getHashVar`` matches ``[#&]name=``; both percent-decode. host, port and encrypt are explicit so
    that vnc.html, which falls back to settings saved in the browser, connects here too."""
    url = urlsplit(ws_url)
    secure = url.scheme == "wss"
    base = url.path.removesuffix(ws_path)
    host = url.hostname or ""
    settings = {
        "autoconnect": "true",
        "host": f"[{host}]" if ":" in host else host,
        "port": str(url.port or (443 if secure else 80)),
        "encrypt": "1" if secure else "0",
        "path": f"{url.path.lstrip('/')}?{url.query}",
    }
    fragment = "&".join(f"{name}={quote(value, safe='/:[]')}" for name, value in settings.items())
    return f"{'https' if secure else 'http'}://{url.netloc}{base}{PREFIX}/{PAGE}#{fragment}"
