"""A small synchronous client of the public API for the CLI (urllib, no dependencies).

Credentials come from the environment like an openrc: HVD_URL, and HVD_TOKEN or
HVD_USERNAME / HVD_PASSWORD / HVD_PROJECT; HVD_CACERT (or `hvd --cacert`) names the cluster CA
that an https:// API's certificate is verified against. API errors become `CliError`s whose message carries the
status and request id, so `hvd` prints one line and exits 1.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hvd.errors import HvdError

DEFAULT_URL = "http://127.0.0.1:8774"


class CliError(HvdError):
    """An error the CLI reports in one line (API errors, connection failures, bad usage)."""

    status = 1
    title = "Client Error"


@dataclass
class Session:
    """Talks to one hvd API; logs in lazily when it has credentials but no token."""

    url: str
    token: str | None = None
    username: str | None = None
    password: str | None = None
    project: str | None = None
    timeout: float = 60.0
    cacert: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Session:
        env = os.environ if env is None else env
        return cls(
            url=env.get("HVD_URL", DEFAULT_URL).rstrip("/"),
            token=env.get("HVD_TOKEN") or None,
            username=env.get("HVD_USERNAME") or None,
            password=env.get("HVD_PASSWORD") or None,
            project=env.get("HVD_PROJECT") or None,
            cacert=env.get("HVD_CACERT") or None,
        )

    def login(self) -> dict[str, Any]:
        """Issue a token from the username/password/project credentials."""
        missing = [n for n, v in (("HVD_USERNAME", self.username), ("HVD_PASSWORD", self.password),
                                  ("HVD_PROJECT", self.project)) if not v]
        if missing:
            raise CliError(f"set HVD_TOKEN, or {', '.join(missing)} (source the openrc the daemon wrote)")
        body = self._send("POST", "/v1/auth/tokens",
                          {"username": self.username, "password": self.password, "project": self.project},
                          token=None)
        assert isinstance(body, dict)
        self.token = str(body["token"])
        return body

    def call(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None,
             auth: bool = True) -> Any:
        """Send one request with the session's token (none when `auth` is false: public paths);
        returns the decoded JSON body (None for 204)."""
        if auth and self.token is None:
            self.login()
        if query:
            path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        return self._send(method, path, body, token=self.token if auth else None)

    def open(self, path: str, query: Mapping[str, Any] | None = None, timeout: float | None = None,
             method: str = "GET", data: Any = None, headers: Mapping[str, str] | None = None) -> Any:
        """A streamed request or answer (/v1/events, image data): the open response, read by the caller;
        `data` may be bytes or an iterable of chunks (then give Content-Length in `headers`)."""
        if self.token is None:
            self.login()
        if query:
            path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={**(headers or {}), "Authorization": f"Bearer {self.token}"})
        try:
            return urllib.request.urlopen(req, timeout=self.timeout if timeout is None else timeout,
                                          context=self._tls())
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except urllib.error.URLError as exc:
            raise CliError(f"cannot connect to {self.url}: {_reason(exc.reason)} (is hvd running? check HVD_URL)"
                           ) from None

    def list_all(self, path: str, plural: str, query: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every item of a paginated collection (follows `next` markers)."""
        return list(self._pages(path, plural, dict(query or {})))

    def _pages(self, path: str, plural: str, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
        while True:
            page = self.call("GET", path, query=query)
            yield from page[plural]
            if not page.get("next"):
                return
            query["marker"] = page["next"]

    def _tls(self) -> ssl.SSLContext | None:
        if not self.cacert:
            return None  # urllib's default: the system's CAs
        try:
            return ssl.create_default_context(cafile=self.cacert)
        except (OSError, ssl.SSLError) as exc:
            raise CliError(f"cannot use HVD_CACERT {self.cacert}: {exc}") from None

    def _send(self, method: str, path: str, body: Any, token: str | None) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._tls()) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except urllib.error.URLError as exc:
            hint = "is hvd running? check HVD_URL"
            raise CliError(f"cannot connect to {self.url}: {_reason(exc.reason)} ({hint})") from None
        except TimeoutError:
            raise CliError(f"no answer from {self.url} within {self.timeout:.0f} s") from None
        except OSError as exc:
            raise CliError(f"cannot talk to {self.url}: {exc}") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")


def _reason(reason: object) -> str:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"{reason.verify_message or reason} (set HVD_CACERT to the cluster CA, e.g. <data_dir>/tls/ca.crt)"

    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)


def _api_error(exc: urllib.error.HTTPError) -> CliError:
    rid = exc.headers.get("X-Request-Id", "no request id")
    message = exc.reason
    try:
        err = json.loads(exc.read())["error"]
        message, rid = err["message"], err.get("request_id") or rid
    except (ValueError, KeyError, TypeError):
        pass
    return CliError(f"{message} (HTTP {exc.code}, {rid})", http_status=exc.code, request_id=rid)
