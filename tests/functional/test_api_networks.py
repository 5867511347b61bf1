"""Networking API over real HTTP and SQLite (fake compute driver, FakeHost network backend):
every route, every error class, project isolation, IPAM order, segment allocation, and the
server wiring (ports made before the server record, removed with it, interface attach)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hvd.drivers.fake import FakeDriver
from hvd.net.model import bridge_name, router_namespace, tap_name
from hvd.net.state import ObservedLink
from tests.conftest import Api, free_port, serve_in_process, write_config
from tests.functional.compute_helpers import make_flavor, make_qcow2, upload_image, wait_server

NET_CONFIG = """
[network]
flat_networks = ["ext"]
physical_interface_mappings = { ext = "ext0", default = "eth9" }
network_vlan_ranges = ["default:100:101"]
vni_ranges = ["5:6"]
netns_prefix = "hvdt-api-"
"""


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    from hvd.config import load_config

    config = load_config(write_config(tmp_path / "hvd", free_port(), extra=NET_CONFIG))
    async with serve_in_process(config) as (services, url):
        net = services.extra["network"]
        net.adapter.host.links["ext0"] = ObservedLink("ext0", kind="device", up=True)  # the external NIC
        async with aiohttp.ClientSession() as session:
            admin = Api(session, url)
            await admin.login("admin", "admin-secret", "admin")
            users = {}
            for project in ("alpha", "beta"):
                status, body = await admin.call("POST", "/v1/projects", {"name": project})
                assert status == 201, body
                name = f"{project}-user"
                status, body = await admin.call("POST", "/v1/users", {"name": name, "password": "password-1",
                                                                      "project": project, "role": "member"})
                assert status == 201, body
                users[project] = Api(session, url)
                await users[project].login(name, "password-1", project)
            yield {"admin": admin, "a": users["alpha"], "b": users["beta"], "net": net, "tmp": tmp_path,
                   "driver": services.extra["compute"].manager.driver}


async def ok(api: Api, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    got, out = await api.call(method, path, body)
    assert got == status, (method, path, got, out)
    return out


async def err(api: Api, method: str, path: str, body: Any, status: int, text: str = "") -> dict[str, Any]:
    got, out = await api.call(method, path, body)
    assert got == status, (method, path, got, out)
    assert text.lower() in out["error"]["message"].lower(), out
    return dict(out["error"])


async def network_with_subnet(api: Api, name: str, cidr: str, **subnet: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    net = await ok(api, "POST", "/v1/networks", {"name": name}, 201)
    sub = await ok(api, "POST", "/v1/subnets", {"network": net["id"], "cidr": cidr, **subnet}, 201)
    return net, sub


def ips(port: dict[str, Any]) -> list[str]:
    return [f["ip_address"] for f in port["fixed_ips"]]


async def test_ipam_order_overlap_and_in_use_errors(env: dict[str, Any]) -> None:
    a: Api = env["a"]
    net, sub = await network_with_subnet(a, "n1", "10.0.0.0/24", dns_nameservers=["10.0.0.53"],
                                         host_routes=[{"destination": "10.9.0.0/16", "nexthop": "10.0.0.254"}])
    assert sub["gateway_ip"] == "10.0.0.1" and sub["enable_dhcp"]
    assert sub["allocation_pools"] == [{"start": "10.0.0.2", "end": "10.0.0.254"}]
    dhcp = (await ok(a, "GET", f"/v1/ports?network_id={net['id']}"))["ports"]
    assert [(p["device_owner"], ips(p), p["host"]) for p in dhcp] == [("network:dhcp", ["10.0.0.2"], "hvd-test")]
    p1 = await ok(a, "POST", "/v1/ports", {"network": "n1"}, 201)
    p2 = await ok(a, "POST", "/v1/ports", {"network": net["id"], "name": "second"}, 201)
    assert (ips(p1), ips(p2)) == (["10.0.0.3"], ["10.0.0.4"])
    assert p1["mac_address"].startswith("fa:16:3e:") and p1["status"] == "DOWN"
    fixed = await ok(a, "POST", "/v1/ports", {"network": "n1", "fixed_ips": [{"ip_address": "10.0.0.50"}]}, 201)
    assert ips(fixed) == ["10.0.0.50"]
    await err(a, "POST", "/v1/ports", {"network": "n1", "fixed_ips": [{"ip_address": "10.0.0.50"}]}, 409,
              "already allocated")
    await err(a, "POST", "/v1/ports", {"network": "n1", "fixed_ips": [{"ip_address": "10.0.1.5"}]}, 400,
              "in no subnet")
    await err(a, "POST", "/v1/ports", {"network": "n1", "fixed_ips": [{"subnet_id": sub["id"],
                                                                       "ip_address": "10.0.1.5"}]}, 400, "not a valid")
    await err(a, "POST", "/v1/ports", {"network": "n1", "fixed_ips": [{"ip_address": "10.0.0.1"}]}, 409, "gateway")
    await err(a, "POST", "/v1/ports", {"network": "n1", "mac_address": p1["mac_address"]}, 409, "MAC")
    # the next automatic address skips the explicit one only when it reaches it
    assert ips(await ok(a, "POST", "/v1/ports", {"network": "n1"}, 201)) == ["10.0.0.5"]
    await err(a, "POST", "/v1/subnets", {"network": "n1", "cidr": "10.0.0.128/25"}, 409, "overlaps")
    await err(a, "POST", "/v1/subnets", {"network": "n1", "cidr": "10.0.0.1/24"}, 400, "host bits")
    other = await ok(a, "POST", "/v1/subnets", {"network": "n1", "cidr": "10.1.0.0/28", "gateway_ip": None,
                                                 "enable_dhcp": False}, 201)
    assert other["gateway_ip"] is None and other["allocation_pools"] == [{"start": "10.1.0.1", "end": "10.1.0.14"}]
    # a subnet may overlap a subnet of ANOTHER network
    await network_with_subnet(a, "n2", "10.0.0.0/24")
    await err(a, "DELETE", f"/v1/networks/{net['id']}", None, 409, "in use")
    await err(a, "DELETE", f"/v1/subnets/{sub['id']}", None, 409, "allocation")
    shown = await ok(a, "GET", f"/v1/subnets/{sub['id']}")
    assert shown["dns_nameservers"] == ["10.0.0.53"] and shown["host_routes"][0]["nexthop"] == "10.0.0.254"
    patched = await ok(a, "PATCH", f"/v1/subnets/{sub['id']}", {"name": "renamed", "dns_nameservers": []})
    assert patched["name"] == "renamed" and patched["dns_nameservers"] == []
    for port in (await ok(a, "GET", f"/v1/ports?network_id={net['id']}"))["ports"]:
        if port["device_owner"] != "network:dhcp":
            await ok(a, "DELETE", f"/v1/ports/{port['id']}", status=204)
    await ok(a, "DELETE", f"/v1/subnets/{other['id']}", status=204)
    await ok(a, "DELETE", f"/v1/networks/{net['id']}", status=204)
    await err(a, "GET", f"/v1/networks/{net['id']}", None, 404)
    await err(a, "GET", f"/v1/subnets/{sub['id']}", None, 404)
    assert not [p for p in (await ok(env["admin"], "GET", "/v1/ports"))["ports"] if p["network_id"] == net["id"]]


async def test_provider_fields_segments_and_quota(env: dict[str, Any]) -> None:
    a: Api = env["a"]
    admin: Api = env["admin"]
    await err(a, "POST", "/v1/networks", {"network_type": "vlan", "physical_network": "default"}, 403,
              "network:provider")
    await err(a, "POST", "/v1/networks", {"external": True}, 403, "network:external")
    await err(a, "POST", "/v1/networks", {"shared": True}, 403)
    tenant = await ok(a, "POST", "/v1/networks", {"name": "t"}, 201)
    assert tenant["network_type"] is None and tenant["segmentation_id"] is None  # hidden from non-admin
    assert (await ok(admin, "GET", f"/v1/networks/{tenant['id']}"))["network_type"] == "local"  # no local_ip: no vxlan
    vlans = [await ok(admin, "POST", "/v1/networks", {"network_type": "vlan", "physical_network": "default"}, 201)
             for _ in range(2)]
    assert [v["segmentation_id"] for v in vlans] == [100, 101]  # sequential from the range
    await err(admin, "POST", "/v1/networks", {"network_type": "vlan", "physical_network": "default"}, 409, "no free")
    await err(admin, "POST", "/v1/networks", {"network_type": "vlan", "physical_network": "default",
                                               "segmentation_id": 5000}, 409, "outside")
    await err(admin, "POST", "/v1/networks", {"network_type": "vlan", "physical_network": "default",
                                               "segmentation_id": 100}, 409, "in use")
    pick = await ok(admin, "POST", "/v1/networks", {"network_type": "vlan", "physical_network": "default",
                                                     "segmentation_id": 7}, 201)
    assert pick["segmentation_id"] == 7  # admin may pick any id outside the tenant range
    await err(admin, "POST", "/v1/networks", {"network_type": "vlan", "physical_network": "nowhere"}, 400)
    vx = await ok(admin, "POST", "/v1/networks", {"network_type": "vxlan"}, 201)
    assert vx["segmentation_id"] == 5 and vx["mtu"] == 1450
    await ok(admin, "POST", "/v1/networks", {"network_type": "flat", "physical_network": "ext"}, 201)
    await err(admin, "POST", "/v1/networks", {"network_type": "flat", "physical_network": "ext"}, 409, "flat")
    await err(admin, "POST", "/v1/networks", {"network_type": "local", "segmentation_id": 3}, 400)
    # quotas: ports (DHCP ports do not count), networks
    projects = await ok(admin, "GET", "/v1/projects")
    alpha = next(p for p in projects["projects"] if p["name"] == "alpha")
    await ok(admin, "PUT", f"/v1/quotas/{alpha['id']}", {"quotas": {"ports": 1, "networks": 2}})
    await ok(a, "POST", "/v1/subnets", {"network": "t", "cidr": "192.168.5.0/24"}, 201)
    await ok(a, "POST", "/v1/ports", {"network": "t"}, 201)
    await err(a, "POST", "/v1/ports", {"network": "t"}, 403, "quota exceeded for ports")
    await ok(a, "POST", "/v1/networks", {"name": "second"}, 201)
    await err(a, "POST", "/v1/networks", {"name": "third"}, 403, "quota exceeded for networks")
    usage = await ok(admin, "GET", f"/v1/quotas/{alpha['id']}")
    assert "ports" in str(usage)


async def test_isolation_shared_and_external(env: dict[str, Any]) -> None:
    a, b, admin = env["a"], env["b"], env["admin"]
    net, sub = await network_with_subnet(a, "private", "10.5.0.0/24")
    port = await ok(a, "POST", "/v1/ports", {"network": "private"}, 201)
    for path in (f"/v1/networks/{net['id']}", f"/v1/subnets/{sub['id']}", f"/v1/ports/{port['id']}"):
        await err(b, "GET", path, None, 404)
        await err(b, "DELETE", path, None, 404)
    assert (await ok(b, "GET", "/v1/networks"))["networks"] == []
    assert (await ok(b, "GET", "/v1/ports"))["ports"] == []
    await err(b, "POST", "/v1/ports", {"network": net["id"]}, 404)
    await err(b, "POST", "/v1/subnets", {"network": net["id"], "cidr": "10.6.0.0/24"}, 404)
    shared = await ok(admin, "POST", "/v1/networks", {"name": "shared", "shared": True}, 201)
    await ok(admin, "POST", "/v1/subnets", {"network": shared["id"], "cidr": "10.7.0.0/24"}, 201)
    ext = await ok(admin, "POST", "/v1/networks", {"name": "public", "network_type": "flat",
                                                    "physical_network": "ext", "external": True}, 201)
    names = {n["name"] for n in (await ok(b, "GET", "/v1/networks"))["networks"]}
    assert names == {"shared", "public"}
    theirs = await ok(b, "POST", "/v1/ports", {"network": "shared"}, 201)
    assert theirs["project_id"] != port["project_id"] and ips(theirs) == ["10.7.0.3"]
    await err(b, "POST", "/v1/ports", {"network": ext["id"]}, 404)  # external is not shared
    await err(b, "DELETE", f"/v1/networks/{shared['id']}", None, 404)  # visible is not owned
    page1 = await ok(admin, "GET", "/v1/networks?limit=1")
    assert len(page1["networks"]) == 1 and page1["next"]
    page2 = await ok(admin, "GET", f"/v1/networks?limit=10&marker={page1['next']}")
    assert page1["networks"][0]["id"] not in {n["id"] for n in page2["networks"]}
    await err(admin, "GET", "/v1/networks?marker=nope", None, 400)
    renamed = await ok(a, "PATCH", f"/v1/networks/{net['id']}", {"name": "still-private"})
    assert renamed["name"] == "still-private"
    await err(a, "PATCH", f"/v1/networks/{net['id']}", {"bogus": 1}, 400, "unknown field")


async def test_security_groups_and_rules(env: dict[str, Any]) -> None:
    a, b = env["a"], env["b"]
    groups = (await ok(a, "GET", "/v1/security-groups"))["security_groups"]
    assert [g["name"] for g in groups] == ["default"]
    default = groups[0]
    assert sorted((r["direction"], r["ethertype"], r["remote_group_id"]) for r in default["rules"]) == [
        ("egress", "IPv4", None), ("egress", "IPv6", None),
        ("ingress", "IPv4", default["id"]), ("ingress", "IPv6", default["id"])]
    assert len((await ok(a, "GET", "/v1/security-groups"))["security_groups"]) == 1  # created once
    web = await ok(a, "POST", "/v1/security-groups", {"name": "web", "description": "http"}, 201)
    rule = await ok(a, "POST", "/v1/security-group-rules", {"security_group": "web", "direction": "ingress",
                                                             "protocol": "tcp", "port_range_min": 80}, 201)
    assert rule["port_range_max"] == 80 and rule["security_group_id"] == web["id"]
    await err(a, "POST", "/v1/security-group-rules", {"security_group": "web", "direction": "ingress",
                                                       "protocol": "tcp", "port_range_min": 80}, 409, "exists")
    await err(a, "POST", "/v1/security-group-rules", {"security_group": "web", "direction": "ingress",
                                                       "protocol": "icmp", "port_range_min": 1}, 400, "port")
    await err(a, "POST", "/v1/security-group-rules", {"security_group": "web", "direction": "ingress",
                                                       "remote_ip_prefix": "::/0"}, 400, "IPv4")
    b_group = (await ok(b, "GET", "/v1/security-groups"))["security_groups"][0]
    await err(a, "POST", "/v1/security-group-rules", {"security_group": "web", "direction": "ingress",
                                                       "remote_group": b_group["id"]}, 404)
    await err(b, "GET", f"/v1/security-groups/{web['id']}", None, 404)
    await err(b, "GET", f"/v1/security-group-rules/{rule['id']}", None, 404)
    listed = (await ok(a, "GET", f"/v1/security-group-rules?security_group={web['id']}"))["security_group_rules"]
    assert {r["id"] for r in listed} >= {rule["id"]}
    await network_with_subnet(a, "sgnet", "10.8.0.0/24")
    port = await ok(a, "POST", "/v1/ports", {"network": "sgnet", "security_groups": ["web"]}, 201)
    assert port["security_groups"] == [web["id"]]
    await err(a, "DELETE", f"/v1/security-groups/{web['id']}", None, 409, "in use")
    await err(a, "DELETE", f"/v1/security-groups/{default['id']}", None, 409, "default")
    await err(a, "POST", "/v1/security-groups", {"name": "default"}, 409)
    await err(a, "POST", "/v1/ports", {"network": "sgnet", "security_groups": ["web"],
                                       "port_security_enabled": False}, 400)
    port = await ok(a, "PATCH", f"/v1/ports/{port['id']}", {"security_groups": []})
    assert port["security_groups"] == []
    await ok(a, "PATCH", f"/v1/security-groups/{web['id']}", {"name": "www"})
    await ok(a, "DELETE", f"/v1/security-group-rules/{rule['id']}", status=204)
    await ok(a, "DELETE", f"/v1/security-groups/{web['id']}", status=204)
    await err(a, "GET", f"/v1/security-groups/{web['id']}", None, 404)


async def test_routers_floating_ips_and_host_namespaces(env: dict[str, Any]) -> None:
    a, b, admin = env["a"], env["b"], env["admin"]
    ext = await ok(admin, "POST", "/v1/networks", {"name": "public", "network_type": "flat",
                                                    "physical_network": "ext", "external": True}, 201)
    await ok(admin, "POST", "/v1/subnets", {"network": ext["id"], "cidr": "172.31.0.0/24", "enable_dhcp": False}, 201)
    net, sub = await network_with_subnet(a, "inside", "10.20.0.0/24")
    await network_with_subnet(a, "lonely", "10.21.0.0/24")
    await err(a, "POST", "/v1/routers", {"name": "r", "external_gateway": {"network": net["id"]}}, 400, "external")
    router = await ok(a, "POST", "/v1/routers", {"name": "r", "external_gateway": {"network": "public"}}, 201)
    assert router["external_gateway"]["ip_address"] == "172.31.0.2"  # .1 is the upstream gateway
    router = await ok(a, "POST", f"/v1/routers/{router['id']}/add-interface", {"subnet": sub["id"]})
    assert [(i["subnet_id"], i["ip_address"]) for i in router["interfaces"]] == [(sub["id"], "10.20.0.1")]
    await err(a, "POST", f"/v1/routers/{router['id']}/add-interface", {"subnet": sub["id"]}, 409, "already")
    await err(a, "POST", f"/v1/routers/{router['id']}/add-interface", {"subnet": sub["id"], "port": "x"}, 400)
    await err(b, "POST", f"/v1/routers/{router['id']}/add-interface", {"subnet": sub["id"]}, 404)
    vm = await ok(a, "POST", "/v1/ports", {"network": "inside"}, 201)
    stray = await ok(a, "POST", "/v1/ports", {"network": "lonely"}, 201)
    fip = await ok(a, "POST", "/v1/floating-ips", {"floating_network": "public"}, 201)
    assert fip["floating_ip_address"] == "172.31.0.3" and fip["status"] == "DOWN"
    fip = await ok(a, "POST", f"/v1/floating-ips/{fip['id']}/associate", {"port": vm["id"]})
    assert (fip["fixed_ip_address"], fip["router_id"], fip["status"]) == (ips(vm)[0], router["id"], "ACTIVE")
    await err(a, "POST", f"/v1/floating-ips/{fip['id']}/associate", {"port": stray["id"]}, 400, "not reachable")
    await err(a, "POST", "/v1/floating-ips", {"floating_network": "public", "port": vm["id"]}, 409, "already has")
    await err(a, "POST", "/v1/floating-ips", {"floating_network": net["id"]}, 400, "external")
    await err(a, "POST", "/v1/floating-ips", {"floating_network": "public", "floating_ip_address": "172.31.0.3"},
              409, "already allocated")
    await err(b, "GET", f"/v1/floating-ips/{fip['id']}", None, 404)
    await err(a, "POST", f"/v1/routers/{router['id']}/remove-interface", {"subnet": sub["id"]}, 409, "floating")
    await err(a, "DELETE", f"/v1/routers/{router['id']}/gateway", None, 409, "floating")
    await err(a, "DELETE", f"/v1/routers/{router['id']}", None, 409, "ports")
    await err(a, "DELETE", f"/v1/ports/{router['interfaces'][0]['port_id']}", None, 409, "device owner")
    await err(admin, "DELETE", f"/v1/networks/{ext['id']}", None, 409)
    # the host has the router namespace with the floating IP on its gateway leg
    fake = env["net"].adapter.host
    ns = router_namespace(router["id"], "hvdt-api-")
    assert ns in fake.namespaces
    qg = next(link for name, link in fake.namespaces[ns].items() if name.startswith("qg-"))
    assert "172.31.0.3/32" in qg.addresses and "172.31.0.2/24" in qg.addresses
    shown = await ok(a, "GET", "/v1/floating-ips")
    assert [f["id"] for f in shown["floating_ips"]] == [fip["id"]]
    fip = await ok(a, "POST", f"/v1/floating-ips/{fip['id']}/disassociate", {})
    assert fip["port_id"] is None and fip["router_id"] is None
    qg = next(link for name, link in fake.namespaces[ns].items() if name.startswith("qg-"))
    assert "172.31.0.3/32" not in qg.addresses
    await ok(a, "POST", f"/v1/routers/{router['id']}/remove-interface", {"subnet": sub["id"]})
    router = await ok(a, "DELETE", f"/v1/routers/{router['id']}/gateway")
    assert router["external_gateway"] is None
    router = await ok(a, "PUT", f"/v1/routers/{router['id']}/gateway", {"network": "public"})
    assert router["external_gateway"]["network_id"] == ext["id"]
    await ok(a, "PATCH", f"/v1/routers/{router['id']}", {"name": "r2"})
    assert [r["name"] for r in (await ok(a, "GET", "/v1/routers"))["routers"]] == ["r2"]
    assert (await ok(b, "GET", "/v1/routers"))["routers"] == []
    await ok(a, "DELETE", f"/v1/floating-ips/{fip['id']}", status=204)
    await ok(a, "DELETE", f"/v1/routers/{router['id']}", status=204)
    assert ns not in fake.namespaces
    await err(a, "GET", f"/v1/routers/{router['id']}", None, 404)


async def test_servers_get_ports_and_lose_them(env: dict[str, Any]) -> None:
    a, admin = env["a"], env["admin"]
    await upload_image(admin, make_qcow2(env["tmp"] / "img.qcow2"), name="img", visibility="public")
    await make_flavor(admin, name="tiny")
    # no network in the project: "auto" gives no NIC
    status, bare = await a.call("POST", "/v1/servers", {"name": "bare", "flavor": "tiny", "image": "img"})
    assert status == 202 and bare["addresses"] == {}, bare
    net, _ = await network_with_subnet(a, "web", "10.30.0.0/24")
    status, srv = await a.call("POST", "/v1/servers?wait=true", {"name": "one", "flavor": "tiny", "image": "img"})
    assert status == 202 and srv["status"] == "ACTIVE", srv
    assert [(e["addr"], e["type"]) for e in srv["addresses"]["web"]] == [("10.30.0.3", "fixed")]
    ports = (await ok(a, "GET", f"/v1/ports?device_id={srv['id']}"))["ports"]
    assert len(ports) == 1 and ports[0]["status"] == "ACTIVE" and ports[0]["host"] == "hvd-test"
    # a bad address is a 4xx and leaves neither a server nor a port behind
    before = await ok(a, "GET", "/v1/servers")
    await err(a, "POST", "/v1/servers", {"name": "bad", "flavor": "tiny", "image": "img",
                                         "networks": [{"network": "web", "fixed_ip": "10.99.0.5"}]}, 400)
    await err(a, "POST", "/v1/servers", {"name": "bad", "flavor": "tiny", "image": "img",
                                         "networks": [{"network": "web", "fixed_ip": "10.30.0.3"}]}, 409)
    await err(a, "POST", "/v1/servers", {"name": "bad", "flavor": "tiny", "image": "img",
                                         "networks": [{"network": str(uuid.uuid4())}]}, 404)
    assert (await ok(a, "GET", "/v1/servers"))["servers"] == before["servers"]
    assert [p["device_id"] for p in (await ok(a, "GET", "/v1/ports"))["ports"]
            if p["device_owner"] != "network:dhcp"] == [srv["id"]]
    # two networks: "auto" is ambiguous; explicit NICs, a fixed IP and a user port
    await network_with_subnet(a, "db", "10.31.0.0/24")
    await err(a, "POST", "/v1/servers", {"name": "x", "flavor": "tiny", "image": "img"}, 409, "Multiple")
    mine = await ok(a, "POST", "/v1/ports", {"network": "db", "name": "keep-me"}, 201)
    status, two = await a.call("POST", "/v1/servers?wait=true", {
        "name": "two", "flavor": "tiny", "image": "img",
        "networks": [{"network": net["id"], "fixed_ip": "10.30.0.77"}, {"port": mine["id"]}]})
    assert status == 202 and two["status"] == "ACTIVE", two
    assert two["addresses"]["web"][0]["addr"] == "10.30.0.77" and two["addresses"]["db"][0]["addr"] == ips(mine)[0]
    await err(a, "POST", "/v1/servers", {"name": "x", "flavor": "tiny", "image": "img",
                                         "networks": [{"port": mine["id"]}]}, 409, "in use")
    status, none = await a.call("POST", "/v1/servers", {"name": "none", "flavor": "tiny", "image": "img",
                                                        "networks": "none"})
    assert status == 202 and none["addresses"] == {}
    # interfaces: attach to a running server, then detach; the hypervisor (fake driver) sees both
    driver: FakeDriver = env["driver"]

    def nics_on_domain() -> list[tuple[str, str, str]]:
        return [(n.mac, n.bridge, n.tap) for n in driver.domains[two["id"]].nics]

    booted_with = nics_on_domain()
    two_ports = (await ok(a, "GET", f"/v1/ports?device_id={two['id']}"))["ports"]
    assert sorted(booted_with) == sorted((p["mac_address"], bridge_name(p["network_id"]), tap_name(p["id"]))
                                         for p in two_ports)
    added = await ok(a, "POST", f"/v1/servers/{two['id']}/interfaces", {"network": "db"}, 201)
    listed = (await ok(a, "GET", f"/v1/servers/{two['id']}/interfaces"))["interfaces"]
    assert [p["id"] for p in listed][-1] == added["id"] and len(listed) == 3
    plugged = (added["mac_address"], bridge_name(added["network_id"]), tap_name(added["id"]))
    assert nics_on_domain() == [*booted_with, plugged]
    await ok(a, "DELETE", f"/v1/servers/{two['id']}/interfaces/{added['id']}", status=204)
    assert nics_on_domain() == booted_with
    await err(a, "GET", f"/v1/ports/{added['id']}", None, 404)
    await err(a, "DELETE", f"/v1/servers/{two['id']}/interfaces/{added['id']}", None, 404)
    assert nics_on_domain() == booted_with
    # deleting the server removes its own port and unbinds the user's
    await ok(a, "DELETE", f"/v1/servers/{two['id']}?wait=true", status=204)
    await wait_server(a, two["id"])
    kept = await ok(a, "GET", f"/v1/ports/{mine['id']}")
    assert (kept["device_id"], kept["device_owner"], kept["host"], kept["status"]) == ("", "", "", "DOWN")
    assert not (await ok(a, "GET", f"/v1/ports?device_id={two['id']}"))["ports"]
    for server in (await ok(a, "GET", "/v1/servers"))["servers"]:
        await ok(a, "DELETE", f"/v1/servers/{server['id']}?wait=true", status=204)
    await ok(a, "DELETE", f"/v1/ports/{mine['id']}", status=204)
    assert [p["device_owner"] for p in (await ok(a, "GET", "/v1/ports"))["ports"]] == ["network:dhcp"] * 2


async def test_openapi_lists_network_routes(env: dict[str, Any]) -> None:
    doc = await ok(env["a"], "GET", "/v1/openapi.json")
    for path in ("/v1/networks", "/v1/subnets/{id}", "/v1/ports", "/v1/routers/{id}/add-interface",
                 "/v1/routers/{id}/gateway", "/v1/floating-ips/{id}/associate", "/v1/security-group-rules",
                 "/v1/servers/{id}/interfaces/{port}"):
        assert path in doc["paths"], path


async def test_subnet_options_are_checked_on_create_and_update(env: dict[str, Any]) -> None:
    a: Api = env["a"]
    net = await ok(a, "POST", "/v1/networks", {"name": "opts"}, 201)
    await err(a, "POST", "/v1/subnets", {"network": "opts", "cidr": "10.30.0.0/24", "dns_nameservers": ["2001:db8::1"]},
              400, "DNS server 2001:db8::1 is IPv6; subnet 10.30.0.0/24 is IPv4")
    await err(a, "POST", "/v1/subnets", {"network": "opts", "cidr": "10.30.0.0/24", "host_routes": [
        {"destination": "2001:db8::/64", "nexthop": "10.30.0.1"}]}, 400, "not IPv4")
    await err(a, "POST", "/v1/subnets", {"network": "opts", "cidr": "10.30.0.0/24",
                                         "dns_nameservers": [f"10.30.0.{i}" for i in range(6)]}, 400)
    sub = await ok(a, "POST", "/v1/subnets", {"network": net["id"], "cidr": "10.30.0.0/24",
                                              "dns_nameservers": ["10.30.0.53"]}, 201)
    path = f"/v1/subnets/{sub['id']}"
    await err(a, "PATCH", path, {"dns_nameservers": ["2001:db8::1"]}, 400, "IPv6")
    await err(a, "PATCH", path, {"dns_nameservers": ["10.30.0.9", "10.30.0.9"]}, 400, "twice")
    await err(a, "PATCH", path, {"dns_nameservers": ["10.30.0.9%eth0"]}, 400, "scope id")
    await err(a, "PATCH", path, {"host_routes": [{"destination": "2001:db8::/64", "nexthop": "10.30.0.1"}]}, 400,
              "not IPv4")
    await err(a, "PATCH", path, {"host_routes": [{"destination": "10.9.0.0/16", "nexthop": "2001:db8::1"}]}, 400,
              "not IPv4")
    shown = await ok(a, "GET", path)
    assert (shown["dns_nameservers"], shown["host_routes"]) == (["10.30.0.53"], [])
    six = await ok(a, "POST", "/v1/subnets", {"network": net["id"], "cidr": "2001:DB8:30::/64",
                                              "dns_nameservers": ["2001:DB8:30:0::53"]}, 201)
    assert (six["cidr"], six["dns_nameservers"]) == ("2001:db8:30::/64", ["2001:db8:30::53"])  # canonical
    # the host still converges every network: the DHCP of this one runs
    assert env["net"].failed == {}
    assert env["net"].adapter.host.dhcp[net["id"]].pid is not None


async def test_scoped_addresses_are_refused_and_compared_canonically(env: dict[str, Any]) -> None:
    a: Api = env["a"]
    net = await ok(a, "POST", "/v1/networks", {"name": "six"}, 201)
    await err(a, "POST", "/v1/subnets", {"network": "six", "cidr": "2001:db8:40::%eth0/64"}, 400, "scope id")
    await err(a, "POST", "/v1/subnets", {"network": "six", "cidr": "2001:db8:40::/64",
                                         "gateway_ip": "2001:db8:40::1%x"}, 400, "scope id")
    sub = await ok(a, "POST", "/v1/subnets", {"network": net["id"], "cidr": "2001:db8:40::/64"}, 201)
    port = await ok(a, "POST", "/v1/ports", {"network": "six", "fixed_ips": [{"ip_address": "2001:DB8:40:0::5"}]},
                    201)
    assert ips(port) == ["2001:db8:40::5"]
    for hostile in ("2001:db8:40::5%anything", "2001:db8:40::5%a\n}", "2001:db8:40::1%{x}"):
        await err(a, "POST", "/v1/ports", {"network": "six", "fixed_ips": [{"ip_address": hostile}]}, 400, "scope id")
    await err(a, "POST", "/v1/ports", {"network": "six", "fixed_ips": [{"ip_address": "2001:db8:40::0:5"}]}, 409,
              "already allocated")
    await err(a, "POST", "/v1/ports", {"network": "six", "fixed_ips": [{"ip_address": "2001:db8:40:0:0::1"}]}, 409,
              "gateway")
    group = (await ok(a, "GET", "/v1/security-groups"))["security_groups"][0]
    rule = await ok(a, "POST", "/v1/security-group-rules", {"security_group": group["id"], "direction": "ingress",
                                                             "remote_ip_prefix": "10.0.0.5/24"}, 201)
    assert rule["remote_ip_prefix"] == "10.0.0.0/24"
    await err(a, "POST", "/v1/security-group-rules", {"security_group": group["id"], "direction": "ingress",
                                                      "ethertype": "IPv6", "remote_ip_prefix": "fe80::%1/64"}, 400,
              "scope id")
    await err(a, "POST", "/v1/floating-ips", {"floating_network": "x", "floating_ip_address": "1.2.3.4%x"}, 400,
              "scope id")
    assert sub["allocation_pools"][0]["start"] == "2001:db8:40::2"
    # nothing scoped reached the host: its hosts file and ruleset carry the canonical address only
    hosts = env["net"].adapter.host.dhcp[net["id"]].hosts
    assert "2001:db8:40::5" in hosts and "%" not in hosts


async def test_spoofing_on_a_shared_network_is_for_its_owner_or_admin(env: dict[str, Any]) -> None:
    a, b, admin = env["a"], env["b"], env["admin"]
    shared = await ok(admin, "POST", "/v1/networks", {"name": "commons", "shared": True}, 201)
    sub = await ok(admin, "POST", "/v1/subnets", {"network": shared["id"], "cidr": "10.50.0.0/24",
                                                  "allocation_pools": [{"start": "10.50.0.10",
                                                                        "end": "10.50.0.99"}]}, 201)
    for body, what in (({"port_security_enabled": False}, "disable port security"),
                       ({"mac_address": "fa:16:3e:00:50:01"}, "choose the MAC address"),
                       ({"fixed_ips": [{"ip_address": "10.50.0.20"}]}, "choose the fixed IP address")):
        await err(b, "POST", "/v1/ports", {"network": "commons", **body}, 403, what)
    # the subnet alone is fine (Neutron's rule too): the address comes from the pool
    port = await ok(b, "POST", "/v1/ports", {"network": "commons", "fixed_ips": [{"subnet_id": sub["id"]}]}, 201)
    assert ips(port) == ["10.50.0.11"]
    await err(b, "PATCH", f"/v1/ports/{port['id']}", {"port_security_enabled": False}, 403, "port security")
    await upload_image(admin, make_qcow2(env["tmp"] / "img.qcow2"), name="img", visibility="public")
    await make_flavor(admin, name="tiny")
    await err(b, "POST", "/v1/servers", {"name": "s", "flavor": "tiny", "image": "img",
                                         "networks": [{"network": "commons", "fixed_ip": "10.50.0.30"}]}, 403,
              "choose the fixed IP address")
    # the owner (admin here) may, but only inside the pools
    await err(admin, "POST", "/v1/ports", {"network": "commons", "fixed_ips": [{"ip_address": "10.50.0.200"}]}, 400,
              "outside the allocation pools")
    mine = await ok(admin, "POST", "/v1/ports", {"network": "commons", "port_security_enabled": False,
                                                 "mac_address": "fa:16:3e:00:50:02",
                                                 "fixed_ips": [{"ip_address": "10.50.0.20"}]}, 201)
    assert ips(mine) == ["10.50.0.20"] and not mine["port_security_enabled"]
    # on its own network a member chooses freely (inside the pools)
    await network_with_subnet(a, "own", "10.51.0.0/24")
    await ok(a, "POST", "/v1/ports", {"network": "own", "port_security_enabled": False,
                                      "mac_address": "fa:16:3e:00:51:01",
                                      "fixed_ips": [{"ip_address": "10.51.0.77"}]}, 201)
    # floating IPs: a chosen address must lie in the external subnet's pools
    ext = await ok(admin, "POST", "/v1/networks", {"name": "public", "network_type": "flat",
                                                    "physical_network": "ext", "external": True}, 201)
    await ok(admin, "POST", "/v1/subnets", {"network": ext["id"], "cidr": "172.30.0.0/24", "enable_dhcp": False,
                                            "allocation_pools": [{"start": "172.30.0.100",
                                                                  "end": "172.30.0.150"}]}, 201)
    for outside in ("172.30.0.5", "172.30.0.200"):
        await err(b, "POST", "/v1/floating-ips", {"floating_network": "public", "floating_ip_address": outside},
                  400, "outside the allocation pools")
    await err(b, "POST", "/v1/floating-ips", {"floating_network": "public", "floating_ip_address": "172.30.0.1"},
              409, "gateway")
    fip = await ok(b, "POST", "/v1/floating-ips", {"floating_network": "public",
                                                   "floating_ip_address": "172.30.0.120"}, 201)
    assert fip["floating_ip_address"] == "172.30.0.120"


async def test_a_failing_network_is_reported_and_retried_while_the_others_converge(
        env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import REGISTRY

    from hvd.net.plan import SECURITY_UNIT, network_unit
    from hvd.net.proc import NetError

    a, service = env["a"], env["net"]
    fake = service.adapter.host
    bad = await ok(a, "POST", "/v1/networks", {"name": "bad"}, 201)
    real_start = fake._StartDnsmasq

    def refusing(step: Any) -> None:  # this host's dnsmasq refuses the network (as for a bad option)
        if step.network_id == bad["id"]:
            raise NetError("dnsmasq: bad command line options")
        real_start(step)

    monkeypatch.setattr(fake, "_StartDnsmasq", refusing)
    await ok(a, "POST", "/v1/subnets", {"network": bad["id"], "cidr": "10.60.0.0/24"}, 201)  # committed: 201
    good, _ = await network_with_subnet(a, "good", "10.61.0.0/24")
    assert set(service.failed) == {network_unit(bad["id"])}
    assert fake.dhcp[good["id"]].pid is not None and fake.dhcp[bad["id"]].pid is None
    assert REGISTRY.get_sample_value("hvd_net_failed_units") == 1
    with pytest.raises(NetError):  # plugging an instance into the bad network fails, naming the cause
        await service.sync(require={network_unit(bad["id"]), SECURITY_UNIT})
    await service.sync(require={network_unit(good["id"]), SECURITY_UNIT})  # the good one plugs fine
    monkeypatch.setattr(fake, "_StartDnsmasq", real_start)
    await service.sync()  # the next converge (the periodic loop's) retries it
    assert service.failed == {} and fake.dhcp[bad["id"]].pid is not None
    assert REGISTRY.get_sample_value("hvd_net_failed_units") == 0


async def test_a_network_this_host_cannot_build_holds_back_no_other(env: dict[str, Any]) -> None:
    from hvd.net.plan import network_unit
    from hvd.net.proc import NetError

    admin, a, service = env["admin"], env["a"], env["net"]
    # this host has no [network] local_ip: it cannot carry a vxlan network an admin asks for
    overlay = await ok(admin, "POST", "/v1/networks", {"name": "overlay", "network_type": "vxlan"}, 201)
    await ok(admin, "POST", "/v1/subnets", {"network": overlay["id"], "cidr": "10.70.0.0/24"}, 201)
    good, _ = await network_with_subnet(a, "plain", "10.71.0.0/24")
    fake = service.adapter.host
    assert fake.dhcp[good["id"]].pid is not None, "the other network converged"
    assert overlay["id"] not in fake.dhcp and set(service.failed) == {network_unit(overlay["id"])}
    with pytest.raises(NetError, match="needs \\[network\\] local_ip"):
        await service.sync(require={network_unit(overlay["id"])})
