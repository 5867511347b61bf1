"""IP address and prefix text: one parser for every API model, catalog command and renderer.

Python's `ipaddress` accepts IPv6 scope ids (`2001:db8::5%anything`, any characters after the
`%`, newlines and braces included), and `str()` keeps them. Such text would compare unequal to
the plain address in IPAM and reach the nftables ruleset and the dnsmasq hosts file, so every
address hvd takes goes through `canonical_ip` / `canonical_network`: no scope id, and the one
canonical spelling (`2001:DB8:0::5` -> `2001:db8::5`), which is what the catalog stores and
compares.

`IpAddress`, `IpNetwork` (host bits must be clear) and `IpPrefix` (host bits dropped) are the
pydantic types built on them.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, Field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_TEXT = 64  # the longest IPv6 prefix text is 43 characters


def _plain(text: str, what: str) -> str:
    if not isinstance(text, str) or not text or len(text) > MAX_TEXT:
        raise ValueError(f"{what} must be a non-empty string of at most {MAX_TEXT} characters")
    if "%" in text:
        raise ValueError(f"{what} {text!r} has a scope id ('%...'); give the address without it")
    return text


def parse_ip(text: str) -> IPAddress:
    """The address `text` names; ValueError if it is not a plain IPv4/IPv6 address."""
    return ipaddress.ip_address(_plain(text, "IP address"))


def canonical_ip(text: str) -> str:
    """`text` in canonical form (ValueError if it is not a plain address)."""
    return str(parse_ip(text))


def parse_network(text: str, strict: bool = True) -> IPNetwork:
    """The prefix `text` names (`strict`: host bits must be clear)."""
    return ipaddress.ip_network(_plain(text, "CIDR"), strict=strict)


def canonical_network(text: str) -> str:
    return str(parse_network(text, strict=True))


def canonical_prefix(text: str) -> str:
    """A prefix with its host bits dropped (`10.0.0.5/24` -> `10.0.0.0/24`)."""
    return str(parse_network(text, strict=False))


IpAddress = Annotated[str, Field(max_length=MAX_TEXT, description="An IPv4 or IPv6 address (no scope id)."),
                      AfterValidator(canonical_ip)]
IpNetwork = Annotated[str, Field(max_length=MAX_TEXT, description="A CIDR with no host bits set."),
                      AfterValidator(canonical_network)]
IpPrefix = Annotated[str, Field(max_length=MAX_TEXT, description="A CIDR (host bits are dropped)."),
                     AfterValidator(canonical_prefix)]

MAX_DNS_NAMESERVERS = 5
MAX_HOST_ROUTES = 20


def check_subnet_options(cidr: str, dns_nameservers: list[str], host_routes: list[tuple[str, str]]) -> None:
    """ValueError naming the first option of a subnet `cidr` that DHCP could not serve.

    The one check for subnet create and update: DNS servers and host routes (destination,
    nexthop) of the subnet's own address family, plain canonical addresses, no duplicates,
    at most `MAX_DNS_NAMESERVERS` / `MAX_HOST_ROUTES`. (dnsmasq refuses to start on an IPv6
    DNS server in an IPv4 option, and with it the whole network's DHCP.)
    """
    version = parse_network(cidr, strict=False).version
    if len(dns_nameservers) > MAX_DNS_NAMESERVERS:
        raise ValueError(f"at most {MAX_DNS_NAMESERVERS} dns_nameservers, got {len(dns_nameservers)}")
    if len(host_routes) > MAX_HOST_ROUTES:
        raise ValueError(f"at most {MAX_HOST_ROUTES} host_routes, got {len(host_routes)}")
    seen: set[str] = set()
    for text in dns_nameservers:
        addr = parse_ip(text)
        if addr.version != version:
            raise ValueError(f"DNS server {text} is IPv{addr.version}; subnet {cidr} is IPv{version}")
        if str(addr) in seen:
            raise ValueError(f"DNS server {text} is listed twice")
        seen.add(str(addr))
    destinations: set[str] = set()
    for destination, nexthop in host_routes:
        dst, hop = parse_network(destination, strict=True), parse_ip(nexthop)
        if dst.version != version or hop.version != version:
            raise ValueError(f"host route {destination} via {nexthop} is not IPv{version} like subnet {cidr}")
        if str(dst) in destinations:
            raise ValueError(f"host route destination {destination} is listed twice")
        destinations.add(str(dst))
