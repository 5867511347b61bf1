"""Local commands that set up the cluster's TLS material (they read hvd.toml, not the API):

- ``hvd cluster init``: the first host creates the cluster CA and its own certificate;
- ``hvd cluster issue NODE``: a CA holder makes a certificate for another founding host (copy it over);
- ``hvd cluster join-token``: a member prints a one-time, expiring token for a new host;
- ``hvd cluster join --token T --peer URL``: the new host makes its key, checks the member's CA
  against the token's pin, and gets its certificate signed (hvd/api/internal_join.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

from hvd.cli.commands import Action, Opt, Registry
from hvd.cli.http import CliError, Session
from hvd.cluster import join_token
from hvd.cluster.tls import (
    TlsFiles,
    ca_only_context,
    create_ca,
    files_for,
    fingerprint,
    host_sans,
    issue_host,
    key_pem,
    make_csr,
    new_key,
)
from hvd.config import Config, load_config
from hvd.private_files import private_dir, write_private

DEFAULT_TTL_S = 86400


def _config(args: argparse.Namespace) -> Config:
    return load_config(Path(args.config) if args.config else None)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sans(config: Config, extra: list[str]) -> list[str]:
    own = config.cluster.peer_urls().get(config.node_id, "")
    return host_sans(config.node_id, config.host_name, [own, config.api.listen] if own else [config.api.listen],
                     extra)


def _write_cert(path: Path, pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pem)
    os.chmod(path, 0o644)  # certificates are public; keys are not


def _write_host(files: TlsFiles, cert: bytes, key: bytes, ca: bytes) -> None:
    private_dir(files.key.parent)
    write_private(files.key, key.decode())
    _write_cert(files.cert, cert)
    _write_cert(files.ca_cert, ca)


def _print_token(config: Config, ca_pem: bytes, ttl_s: int, node: str = "") -> None:
    if not config.cluster.cluster_key:
        print("no [cluster] cluster_key: set one (the same on every host) to make join tokens")
        return
    token = join_token.issue(config.cluster.cluster_key.encode(), fingerprint(ca_pem), time.time(), ttl_s, node)
    print(f"join token (one use, {'for ' + node if node else 'any node'}, expires"
          f" {dt.datetime.fromtimestamp(token.expires, dt.UTC):%Y-%m-%d %H:%M}Z):")
    print(token.encode())


def cluster_init(session: Session, args: argparse.Namespace) -> None:
    config = _config(args)
    files = files_for(config)
    if files.ca_cert.exists() and not args.opt_force:
        raise CliError(f"{files.ca_cert} exists: this cluster has a CA already (--force replaces it, and every"
                       " host's certificate with it)")
    now = _now()
    ca_cert, ca_key = create_ca(config.node_id, now)
    cert, key = issue_host(ca_cert, ca_key, config.node_id, _sans(config, args.opt_san), now)
    private_dir(files.ca_key.parent)
    write_private(files.ca_key, ca_key.decode())
    _write_host(files, cert, key, ca_cert)
    print(f"cluster CA {fingerprint(ca_cert)} written to {files.ca_cert} (key {files.ca_key})")
    print(f"host certificate of {config.node_id} ({', '.join(_sans(config, args.opt_san))}) in {files.cert}")
    print("set [tls] enabled = true and https:// peer URLs; other founding hosts: `hvd cluster issue NODE`")
    _print_token(config, ca_cert, args.opt_ttl or DEFAULT_TTL_S)


def cluster_issue(session: Session, args: argparse.Namespace) -> None:
    config = _config(args)
    files = files_for(config)
    try:
        ca_cert, ca_key = files.ca_cert.read_bytes(), files.ca_key.read_bytes()
    except OSError as exc:
        raise CliError(f"this host holds no cluster CA ({exc.strerror}: {exc.filename}): run it where"
                       " `hvd cluster init` ran") from None
    sans = host_sans(args.node, args.node, args.opt_url or [], args.opt_san)
    cert, key = issue_host(ca_cert, ca_key, args.node, sans, _now())
    out = TlsFiles.under(Path(args.opt_out))
    _write_host(out, cert, key, ca_cert)
    print(f"certificate of {args.node} ({', '.join(sans)}) with its key and the CA in {out.cert.parent}:"
          f" copy them to that host's <data_dir>/tls/")


def cluster_join_token(session: Session, args: argparse.Namespace) -> None:
    config = _config(args)
    try:
        ca_cert = files_for(config).ca_cert.read_bytes()
    except OSError as exc:
        raise CliError(f"no cluster CA here ({exc.filename}): run this on a member with [tls] set up") from None
    try:
        _print_token(config, ca_cert, args.opt_ttl or DEFAULT_TTL_S, args.opt_node or "")
    except join_token.JoinTokenError as exc:
        raise CliError(str(exc)) from None


def _fetch(url: str, ctx: ssl.SSLContext, body: bytes | None = None) -> bytes:
    req = urllib.request.Request(url, data=body, method="POST" if body else "GET",
                                 headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=30, context=ctx) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise CliError(f"{url} refused: {message} (HTTP {exc.code})") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def cluster_join(session: Session, args: argparse.Namespace) -> None:
    config = _config(args)
    files = files_for(config)
    if files.cert.exists() and not args.opt_force:
        raise CliError(f"{files.cert} exists (--force replaces it: a new key and certificate)")
    try:
        token = join_token.parse(args.opt_token)
    except join_token.JoinTokenError as exc:
        raise CliError(str(exc)) from None
    base = args.opt_peer.rstrip("/")
    if not base.startswith("https://"):
        raise CliError("--peer must be the https:// URL of a cluster member")
    # the CA is fetched without verification, then trusted only if it is the one the token pins
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    ca_pem = _fetch(base + join_token.CA_PATH, unverified)
    served = fingerprint(ca_pem)
    if served != token.ca:
        raise CliError(f"{base} serves CA {served} but the token pins {token.ca}: not joining")
    key = new_key()
    sans = _sans(config, args.opt_san)
    body = json.dumps({"token": args.opt_token.strip(), "csr": make_csr(key, config.node_id, sans).decode()})
    answer = json.loads(_fetch(base + join_token.JOIN_PATH, ca_only_context(ca_pem), body.encode()))
    _write_host(files, answer["certificate"].encode(), key_pem(key), ca_pem)
    print(f"{config.node_id} joined CA {served}: certificate ({', '.join(sans)}) in {files.cert}")


def _config_opt(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="hvd.toml of this host")


def register_cluster_tls(registry: Registry) -> None:
    san = Opt("--san", "", "another DNS name or IP address of this host (repeatable)", kind="list")
    ttl = Opt("--ttl", "", f"join token lifetime in seconds (default {DEFAULT_TTL_S})", type=int)
    force = Opt("--force", "", "replace existing files", kind="const", const=True)
    registry.register_action("cluster", Action(
        "init", "create the cluster CA and this host's certificate (first host; local)", cluster_init,
        (san, ttl, force), output=False, configure=_config_opt))
    registry.register_action("cluster", Action(
        "issue", "make a certificate for another founding host with this host's CA (local)", cluster_issue,
        (Opt("node", "", "its node id"),
         Opt("--url", "", "a URL it is reached at, e.g. https://10.0.0.2:8774 (repeatable)", kind="list"),
         san, Opt("--out", "", "directory to write host.crt, host.key, ca.crt to", required=True)),
        output=False, configure=_config_opt))
    registry.register_action("cluster", Action(
        "join-token", "print a one-time, expiring token a new host joins with (local)", cluster_join_token,
        (ttl, Opt("--node", "", "only this node id may use it")), output=False, configure=_config_opt))
    registry.register_action("cluster", Action(
        "join", "get this host's certificate from a member with a join token (local)", cluster_join,
        (Opt("--token", "", "from `hvd cluster join-token`", required=True),
         Opt("--peer", "", "https:// URL of a member", required=True), san, force),
        output=False, configure=_config_opt))
