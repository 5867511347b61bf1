"""The intermediate picture a plan is diffed against: namespaces and the veths into them."""

from __future__ import annotations

from dataclasses import dataclass

from hvd.net.nft import NftRuleset
from hvd.net.state import Route


@dataclass(frozen=True)
class VethLayout:
    """A port realised as a veth pair: `tap` on `bridge` in the host, `peer` in `netns`."""

    tap: str
    peer: str
    netns: str
    bridge: str
    mac: str
    mtu: int
    addresses: frozenset[str]


@dataclass(frozen=True)
class NamespaceLayout:
    name: str
    veths: tuple[VethLayout, ...] = ()
    routes: frozenset[Route] = frozenset()
    forwarding: bool = False
    nft: NftRuleset | None = None
    # Tables this namespace may hold from us (removed when `nft` is None).
    nft_tables: tuple[str, ...] = ()
