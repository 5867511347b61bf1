"""Interactive consoles from the CLI.

``hvd console SERVER`` attaches this terminal to the server's serial console, like ``virsh
console``: the terminal is put in raw mode (every key goes to the guest, Ctrl-C included) and
``^]`` (Ctrl-]) detaches and restores it. With a non-terminal stdin (a pipe, a file) the input is
sent as it comes, and the guest's output is still printed for ``--linger`` seconds after the input
ends, so ``printf 'uname -a\\r' | hvd console web1`` works in scripts.

``hvd server remote-console SERVER [--protocol vnc]`` prints a one-time console URL (for noVNC or
any WebSocket client) and, for VNC, ``web_url``: the page that opens it in a browser; ``hvd server
screenshot SERVER`` saves the screen as a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import struct
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from urllib.parse import quote

import aiohttp

from hvd.cli.commands import Action, Registry
from hvd.cli.http import CliError, Session
from hvd.cli.output import print_one

ESCAPE = 0x1D  # ^], as virsh and telnet use
REMOTE_CONSOLE = "POST /v1/servers/{id}/remote-console"
SCREENSHOT = "GET /v1/servers/{id}/screenshot"


def _server_path(ref: str, tail: str) -> str:
    return f"/v1/servers/{quote(ref, safe='')}{tail}"


def console_url(session: Session, server: str, protocol: str) -> str:
    answer = session.call("POST", _server_path(server, "/remote-console"), {"protocol": protocol})
    return str(answer["remote_console"]["url"])


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[bool]:
    """Raw mode on ``fd`` while inside (True), restored on the way out however it is left; a
    non-terminal is left alone (False)."""
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def split_escape(data: bytes) -> tuple[bytes, bool]:
    """What to send before the escape character, and whether it was typed."""
    at = data.find(bytes([ESCAPE]))
    return (data, False) if at < 0 else (data[:at], True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _watch_input(loop: asyncio.AbstractEventLoop, fd: int, queue: asyncio.Queue[bytes]) -> None:
    """Feed what arrives on ``fd`` into ``queue`` (b"" at its end): from the loop for a terminal or
    a pipe, from a daemon thread for what epoll cannot watch (a regular file)."""

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
        queue.put_nowait(data)

    try:
        loop.add_reader(fd, readable)
        return
    except (PermissionError, ValueError):
        pass

    def pump() -> None:
        while True:
            data = os.read(fd, 4096)
            loop.call_soon_threadsafe(queue.put_nowait, data)
            if not data:
                return

    threading.Thread(target=pump, daemon=True, name="console-stdin").start()


async def attach(url: str, in_fd: int, out_fd: int, linger: float, tls: ssl.SSLContext | bool = True) -> str:
    """Relay ``in_fd`` to the console WebSocket at ``url`` and its output to ``out_fd``. Returns why
    it ended: "detached" (^]), "input ended" or "closed" (by the server: the guest stopped), with the
    server's reason after a colon when it gave one (its access was taken: "closed: the token ...")."""
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(url, protocols=("binary",), heartbeat=30.0, ssl=tls, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            raise CliError(f"the console refused the connection: HTTP {exc.status} {exc.message}") from None
        except aiohttp.ClientError as exc:
            raise CliError(f"cannot connect to the console at {url.split('?')[0]}: {exc}") from None
        keys: asyncio.Queue[bytes] = asyncio.Queue()
        _watch_input(loop, in_fd, keys)

        async def to_guest() -> str:
            while data := await keys.get():
                data, escaped = split_escape(data)
                if data:
                    await ws.send_bytes(data)
                if escaped:
                    return "detached"
            return "input ended"

        async def to_user() -> str:
            while (msg := await ws.receive()).type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                _write_all(out_fd, msg.data if isinstance(msg.data, bytes) else msg.data.encode())
            if msg.type == aiohttp.WSMsgType.CLOSE and msg.extra:  # the server said why (4401, 4403, 4409)
                return f"closed: {msg.extra}"
            return "closed"

        sending, receiving = asyncio.ensure_future(to_guest()), asyncio.ensure_future(to_user())
        try:
            done, _ = await asyncio.wait({sending, receiving}, return_when=asyncio.FIRST_COMPLETED)
            if receiving in done:
                return receiving.result()
            why = sending.result()
            if why == "input ended":  # a script: let the guest answer what it was sent
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(receiving), linger)
            return why
        finally:
            for task in (sending, receiving):
                task.cancel()
            await asyncio.gather(sending, receiving, return_exceptions=True)
            with contextlib.suppress(OSError):
                loop.remove_reader(in_fd)
            await ws.close()


def _tls(session: Session) -> ssl.SSLContext | bool:
    """Verify a wss:// console against HVD_CACERT when set, as the rest of the CLI does."""
    cacert = getattr(session, "cacert", None) or os.environ.get("HVD_CACERT")
    try:
        return ssl.create_default_context(cafile=cacert) if cacert else True
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"cannot use HVD_CACERT {cacert}: {exc}") from None


def run_console(session: Session, args: argparse.Namespace) -> None:
    url = console_url(session, args.server, "serial")
    in_fd, out_fd = sys.stdin.fileno(), sys.stdout.fileno()
    with raw_terminal(in_fd) as raw:
        if raw:
            print(f"Connected to {args.server} (escape character is ^])\r", file=sys.stderr, flush=True)
        why = asyncio.run(attach(url, in_fd, out_fd, args.linger, _tls(session)))
    if raw or why.startswith("closed"):
        print(f"\nhvd: console of {args.server} {why}", file=sys.stderr)


def run_remote_console(session: Session, args: argparse.Namespace) -> None:
    answer = session.call("POST", _server_path(args.server, "/remote-console"), {"protocol": args.protocol})
    print_one(answer["remote_console"], args)


def png_dimensions(data: bytes) -> tuple[int, int]:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24:
        raise CliError("the API did not answer a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def run_screenshot(session: Session, args: argparse.Namespace) -> None:
    resp = session.open(_server_path(args.server, "/screenshot"))
    try:
        data = resp.read()
    finally:
        resp.close()
    width, height = png_dimensions(data)
    if args.file == "-":
        sys.stdout.buffer.write(data)
        return
    path = args.file or f"{args.server}.png"
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from None
    print(f"{path}: {width}x{height} PNG")


def _console_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("server", help="server id or name")
    parser.add_argument("--linger", type=float, default=2.0, metavar="SECONDS",
                        help="when stdin is not a terminal and ends, keep printing the guest's output this long"
                             " (default 2)")


def _remote_console_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("server", help="server id or name")
    parser.add_argument("--protocol", choices=("serial", "vnc"), default="vnc",
                        help="vnc: the screen, for noVNC (default); serial: the serial port")


def _screenshot_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("server", help="server id or name")
    parser.add_argument("--file", metavar="PATH", help="where to save the PNG (default SERVER.png; - = stdout)")


def register_console(registry: Registry) -> None:
    registry.register_command(Action(
        "console", "attach this terminal to a server's serial console (^] detaches)", run_console, output=False,
        configure=_console_options, operations=(REMOTE_CONSOLE,)))
    registry.register_action("server", Action(
        "remote-console", "print a one-time console URL (WebSocket: VNC, with a browser page, or the serial port)",
        run_remote_console, configure=_remote_console_options, operations=(REMOTE_CONSOLE,)))
    registry.register_action("server", Action(
        "screenshot", "save the server's screen as a PNG", run_screenshot, output=False,
        configure=_screenshot_options, operations=(SCREENSHOT,)))
