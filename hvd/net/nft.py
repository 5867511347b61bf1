"""nftables: security groups on bridged ports and NAT in router namespaces.

Security groups need conntrack on bridged traffic. Kernels without nf_conntrack_bridge (this
build machine) reject `ct` in the bridge family, so the ruleset has two tables:

* `table bridge hvd_sg` sees the real bridge ports: it drops forged source MACs and ARP, and
  stamps each frame's packet mark with the ids of its input port (high 16 bits) and output
  port (low 16 bits).
* `table inet hvd_sg` sees bridged IPv4/IPv6 through br_netfilter (our bridges are created
  with nf_call_iptables/ip6tables) with conntrack, and dispatches on that mark to per-port
  egress/ingress chains.

Both tables are replaced in one `nft -f` transaction, so rule changes apply at once to
running ports. Renderers are pure; `apply_ruleset` is the adapter.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hvd.net.model import PortSpec, RouterSpec, SecurityGroupRuleSpec, SecurityGroupSpec
from hvd.net.proc import in_netns, run

SG_TABLES = ("bridge hvd_sg", "inet hvd_sg")
NAT_TABLES = ("ip hvd_nat",)
MAX_PORTS = 0xFFFF
TAG_PREFIX = "hvd:"
_ND_FROM_GUEST = "nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, mld2-listener-report"
_ND_TO_GUEST = "nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert, mld-listener-query"


@dataclass(frozen=True)
class NftRuleset:
    """Table definitions for `nft -f`, each carrying `comment "hvd:<tag>"` so the loaded
    version can be recognised without parsing rules back."""

    tables: tuple[str, ...]
    text: str
    tag: str


def _tagged(tables: tuple[str, ...], bodies: Sequence[str]) -> NftRuleset:
    tag = hashlib.sha256("\n".join(bodies).encode()).hexdigest()[:16]
    text = "".join(
        f'table {table} {{\n\tcomment "{TAG_PREFIX}{tag}"\n{body}}}\n'
        for table, body in zip(tables, bodies, strict=True)
    )
    return NftRuleset(tables, text, tag)


def _set(items: Iterable[str]) -> str:
    values = sorted(set(items))
    return values[0] if len(values) == 1 else "{ " + ", ".join(values) + " }"


def _eui64_link_local(mac: str) -> str:
    """The link-local address a guest derives from its MAC (RFC 4291 modified EUI-64)."""
    octets = [int(x, 16) for x in mac.split(":")]
    octets[0] ^= 0x02
    eui = [*octets[:3], 0xFF, 0xFE, *octets[3:]]
    suffix = int.from_bytes(bytes(eui), "big")
    return str(ipaddress.IPv6Address((0xFE80 << 112) | suffix))


def _protected(ports: Sequence[PortSpec]) -> list[PortSpec]:
    chosen = sorted((p for p in ports if p.port_security_enabled), key=lambda p: p.id)
    if len(chosen) > MAX_PORTS:
        raise ValueError(f"at most {MAX_PORTS} protected ports per host")
    return chosen


def set_name(group_id: str, version: int) -> str:
    return f"sg-{group_id}-v{version}"


def render_rule(rule: SecurityGroupRuleSpec, verdict: str) -> str:
    """One allow rule as nft text; `verdict` is `return` (egress) or `accept` (ingress)."""
    v6 = rule.ethertype == "IPv6"
    parts = ["meta nfproto ipv6" if v6 else "meta nfproto ipv4"]
    proto = rule.protocol
    if proto in ("icmp", "icmpv6", "ipv6-icmp"):
        parts.append("meta l4proto ipv6-icmp" if v6 else "meta l4proto icmp")
    elif proto is not None:
        parts.append(f"meta l4proto {proto}")
    family = "ip6" if v6 else "ip"
    addr_dir = "saddr" if rule.direction == "ingress" else "daddr"
    if rule.remote_cidr is not None:
        parts.append(f"{family} {addr_dir} {ipaddress.ip_network(rule.remote_cidr, strict=False)}")
    elif rule.remote_group_id is not None:
        parts.append(f"{family} {addr_dir} @{set_name(rule.remote_group_id, 6 if v6 else 4)}")
    if rule.port_min is not None:
        hi = rule.port_max if rule.port_max is not None else rule.port_min
        span = str(rule.port_min) if hi == rule.port_min else f"{rule.port_min}-{hi}"
        parts.append(f"th dport {span}")
    parts.append(verdict)
    return " ".join(parts)


def _egress_chain(port: PortSpec, rules: Sequence[SecurityGroupRuleSpec]) -> list[str]:
    v4, v6 = port.ips(4), port.ips(6)
    lines = [
        # The DHCP client runs before the guest has an address, so it precedes anti-spoofing.
        "meta nfproto ipv4 udp sport 68 udp dport 67 return",
        "meta nfproto ipv6 udp sport 546 udp dport 547 return",
        # A guest must never answer as a DHCP server or router on the tenant network.
        "udp sport 67 udp dport 68 drop",
        "udp sport 547 udp dport 546 drop",
        "icmpv6 type nd-router-advert drop",
        f"ip saddr != {_set(v4)} drop" if v4 else "meta nfproto ipv4 drop",
        # Duplicate address detection is sent from the unspecified address.
        "ip6 saddr :: icmpv6 type { nd-neighbor-solicit, mld2-listener-report } return",
        f"ip6 saddr != {_set([*v6, _eui64_link_local(port.mac)])} drop",
        "ct state established,related return",
        "ct state invalid drop",
        f"icmpv6 type {{ {_ND_FROM_GUEST} }} return",
    ]
    lines += [render_rule(r, "return") for r in rules if r.direction == "egress"]
    lines.append("drop")
    return lines


def _ingress_chain(rules: Sequence[SecurityGroupRuleSpec]) -> list[str]:
    lines = [
        "ct state established,related accept",
        "ct state invalid drop",
        "udp sport 67 udp dport 68 accept",
        "udp sport 547 udp dport 546 accept",
        f"icmpv6 type {{ {_ND_TO_GUEST} }} accept",
    ]
    lines += [render_rule(r, "accept") for r in rules if r.direction == "ingress"]
    lines.append("drop")
    return lines


def _chain(name: str, lines: Sequence[str], header: str | None = None) -> str:
    body = ([f"\t\t{header}"] if header else []) + [f"\t\t{line}" for line in lines]
    return f"\tchain {name} {{\n" + "\n".join(body) + "\n\t}\n"


def render_security_ruleset(
    ports: Sequence[PortSpec],
    groups: Sequence[SecurityGroupSpec],
    *,
    members: Sequence[PortSpec] | None = None,
) -> NftRuleset | None:
    """The security-group ruleset protecting `ports` (this host's VM ports).

    `members` are all ports whose addresses fill remote-group sets (defaults to `ports`;
    pass every port of the cluster's networks so remote VMs count as group members).
    Ports with port security disabled get no chains. Returns None when nothing is protected.
    """
    protected = _protected(ports)
    if not protected:
        return None
    by_id = {g.id: g for g in groups}
    member_ports = ports if members is None else members

    referenced = sorted(
        {
            r.remote_group_id
            for p in protected
            for gid in p.security_group_ids
            for r in (by_id[gid].rules if gid in by_id else ())
            if r.remote_group_id is not None
        }
    )
    inet_sets: list[str] = []
    for gid in referenced:
        for version, addr_type in ((4, "ipv4_addr"), (6, "ipv6_addr")):
            ips = sorted(
                {ip for m in member_ports if gid in m.security_group_ids for ip in m.ips(version)},
                key=ipaddress.ip_address,
            )
            elements = f"\t\telements = {{ {', '.join(ips)} }}\n" if ips else ""
            inet_sets.append(f"\tset {set_name(gid, version)} {{\n\t\ttype {addr_type}\n{elements}\t}}\n")

    from_map, to_map, egress_map, ingress_map = [], [], [], []
    bridge_chains, inet_chains = [], []
    for index, port in enumerate(protected, start=1):
        tap = port.tap
        from_map.append(f'"{tap}" : jump from-{index}')
        to_map.append(f'"{tap}" : jump to-{index}')
        egress_map.append(f"0x{index << 16:08x} : jump egress-{index}")
        ingress_map.append(f"0x{index:08x} : jump ingress-{index}")
        v4 = port.ips(4)
        arp = [f"arp saddr ether != {port.mac} drop", f"arp saddr ip != {_set([*v4, '0.0.0.0'])} drop"]
        stamp = f"meta mark set 0x{index << 16:08x}"
        bridge_chains.append(_chain(f"from-{index}", [f"ether saddr != {port.mac} drop", *arp, stamp]))
        bridge_chains.append(_chain(f"to-{index}", [f"meta mark set meta mark or 0x{index:08x}"]))
        rules = [r for gid in sorted(set(port.security_group_ids)) if gid in by_id for r in by_id[gid].rules]
        inet_chains.append(_chain(f"egress-{index}", _egress_chain(port, rules), header=f"# port {port.id}"))
        inet_chains.append(_chain(f"ingress-{index}", _ingress_chain(rules), header=f"# port {port.id}"))
    bridge_lines = [
        # Our marks are the only ones that matter on bridged frames; clear leftovers first.
        "meta mark set 0x00000000",
        f"iifname vmap {{ {', '.join(from_map)} }}",
        f"oifname vmap {{ {', '.join(to_map)} }}",
    ]
    bridge_body = _chain(
        "forward", bridge_lines, header="type filter hook forward priority -200; policy accept;"
    ) + "".join(bridge_chains)
    inet_body = (
        "".join(inet_sets)
        + _chain(
            "forward",
            [
                f"meta mark and 0xffff0000 vmap {{ {', '.join(egress_map)} }}",
                f"meta mark and 0x0000ffff vmap {{ {', '.join(ingress_map)} }}",
            ],
            header="type filter hook forward priority 0; policy accept;",
        )
        + "".join(inet_chains)
    )
    return _tagged(SG_TABLES, [bridge_body, inet_body])


def render_router_nat(router: RouterSpec, gateway_device: str, inside_cidrs: Sequence[str]) -> NftRuleset | None:
    """SNAT for the subnets behind the router and DNAT+SNAT per floating IP, out of `qg-`.

    Traffic between the router's own subnets is routed without translation.
    """
    if router.gateway is None:
        return None
    gw_ip = router.gateway.ip
    fips = sorted(router.floating_ips, key=lambda f: ipaddress.ip_address(f.floating_ip))
    pre = [f"ip daddr {f.floating_ip} dnat to {f.fixed_ip}" for f in fips]
    post = [f'oifname "{gateway_device}" ip saddr {f.fixed_ip} snat to {f.floating_ip}' for f in fips]
    post += [
        f'oifname "{gateway_device}" ip saddr {cidr} snat to {gw_ip}'
        for cidr in sorted(set(inside_cidrs))
        if ipaddress.ip_network(cidr).version == 4
    ]
    body = (
        _chain("prerouting", pre, header="type nat hook prerouting priority dstnat; policy accept;")
        + _chain("output", pre, header="type nat hook output priority -100; policy accept;")
        + _chain("postrouting", post, header="type nat hook postrouting priority srcnat; policy accept;")
    )
    return _tagged(NAT_TABLES, [body])


def replace_tables_script(tables: Sequence[str], text: str) -> str:
    """One transaction: create-if-missing, delete, recreate; so the swap is atomic."""
    preamble = "".join(f"table {t}\ndelete table {t}\n" for t in tables)
    return preamble + text


_TAG_RE = re.compile(r'^\s*comment "' + re.escape(TAG_PREFIX) + r'([0-9a-f]+)"', re.MULTILINE)


async def apply_ruleset(netns: str | None, tables: Sequence[str], text: str) -> None:
    """Atomically replace `tables` in `netns` (None: the caller's namespace) with `text`."""
    await run(in_netns(netns, ["nft", "-f", "-"]), stdin=replace_tables_script(tables, text))


async def delete_tables(netns: str | None, tables: Sequence[str]) -> None:
    script = "".join(f"table {t}\ndelete table {t}\n" for t in tables)
    await run(in_netns(netns, ["nft", "-f", "-"]), stdin=script)


async def observe_tags(netns: str | None, tables: Sequence[str]) -> dict[str, str | None]:
    """The `hvd:` tag of each table that exists in `netns` (None: present but untagged)."""
    listed = await run(in_netns(netns, ["nft", "list", "tables"]))
    present = {line.removeprefix("table ").strip() for line in listed.stdout.splitlines()}
    tags: dict[str, str | None] = {}
    for table in tables:
        if table not in present:
            continue
        out = await run(in_netns(netns, ["nft", "list", "table", *table.split()]), check=False)
        match = _TAG_RE.search(out.stdout)
        tags[table] = match.group(1) if match else None
    return tags
