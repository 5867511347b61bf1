"""`hvd network|subnet|port|router|floating-ip|security-group|security-group-rule ...` and server
interfaces, as a user runs them against a daemon (fake compute driver, fake host network)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, start_daemon
from tests.functional.compute_helpers import make_qcow2
from tests.functional.test_cli import api_error, run, run_json


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    d: DaemonProcess = start_daemon(tmp_path_factory.mktemp("cli-network") / "hvd")
    creds = {"HVD_URL": d.url, "HVD_USERNAME": "admin", "HVD_PASSWORD": "admin-secret", "HVD_PROJECT": "admin"}
    token = run(creds, "token", "issue", "-f", "value", "-c", "token").stdout.strip()
    yield {"HVD_URL": d.url, "HVD_TOKEN": token}
    d.stop()


@pytest.fixture(scope="module")
def networks(env: dict[str, str]) -> dict[str, str]:
    """An external network with a subnet, and a tenant network with a subnet: their ids."""
    ext = run_json(env, "network", "create", "ext", "--external")
    run(env, "subnet", "create", "ext-sub", "--network", "ext", "--cidr", "203.0.113.0/24")
    net = run_json(env, "network", "create", "net1")
    sub = run_json(env, "subnet", "create", "sub1", "--network", "net1", "--cidr", "10.0.0.0/24",
                   "--allocation-pool", "start=10.0.0.10,end=10.0.0.50", "--dns", "192.0.2.53",
                   "--host-route", "destination=192.168.0.0/24,nexthop=10.0.0.254")
    assert sub["allocation_pools"] == [{"start": "10.0.0.10", "end": "10.0.0.50"}]
    assert sub["host_routes"] == [{"destination": "192.168.0.0/24", "nexthop": "10.0.0.254"}]
    return {"ext": ext["id"], "net": net["id"], "sub": sub["id"]}


def test_network_subnet_and_port_set(env: dict[str, str], networks: dict[str, str]) -> None:
    run(env, "network", "set", "net1", "--name", "net1-renamed")
    assert run(env, "network", "show", networks["net"], "-f", "value", "-c", "name").stdout == "net1-renamed\n"
    run(env, "network", "set", networks["net"], "--name", "net1")
    run(env, "subnet", "set", "sub1", "--dns", "192.0.2.54", "--dns", "192.0.2.55")
    assert run_json(env, "subnet", "show", "sub1")["dns_nameservers"] == ["192.0.2.54", "192.0.2.55"]
    port = run_json(env, "port", "create", "p-set", "--network", "net1", "--fixed-ip", "ip-address=10.0.0.44")
    assert [ip["ip_address"] for ip in port["fixed_ips"]] == ["10.0.0.44"] and len(port["security_groups"]) == 1
    listed = run(env, "port", "list", "-f", "value", "-c", "name", "-c", "fixed_ips").stdout.splitlines()
    assert "p-set 10.0.0.44" in listed
    run(env, "port", "set", "p-set", "--disable-port-security")
    shown = run_json(env, "port", "show", port["id"])
    assert shown["port_security_enabled"] is False and shown["security_groups"] == []
    run(env, "port", "delete", "p-set")
    assert "p-set" not in run(env, "port", "list", "-f", "value", "-c", "name").stdout.split()
    out = run(env, "subnet", "create", "bad", "--network", "net1", "--cidr", "10.9.0.0/24",
              "--allocation-pool", "first=10.9.0.2", ok=False)
    assert out.returncode == 2 and "start=...,end=..." in out.stderr


def test_router_interfaces_and_gateway(env: dict[str, str], networks: dict[str, str]) -> None:
    router = run_json(env, "router", "create", "r1", "--external-gateway", "ext")
    assert router["external_gateway"]["network_id"] == networks["ext"]
    got = run_json(env, "router", "add-interface", "r1", "--subnet", "sub1")
    assert [(i["subnet_id"], i["ip_address"]) for i in got["interfaces"]] == [(networks["sub"], "10.0.0.1")]
    assert run_json(env, "router", "unset-gateway", "r1")["external_gateway"] is None
    assert run(env, "router", "show", "r1", "-f", "value", "-c", "external_gateway").stdout == "\n"
    gateway = run_json(env, "router", "set-gateway", "r1", "ext", "-c", "external_gateway")["external_gateway"]
    assert gateway["network_id"] == networks["ext"] and gateway["ip_address"].startswith("203.0.113.")
    run(env, "router", "set", "r1", "--name", "r-main")
    listed = run(env, "router", "list", "-f", "value", "-c", "name", "-c", "external_gateway", "-c", "interfaces")
    assert listed.stdout == f"r-main {gateway['ip_address']} 10.0.0.1\n"  # a list shows addresses, show all
    out = run(env, "router", "add-interface", "r-main", "--subnet", "sub1", "--port", "x", ok=False)
    assert out.returncode == 1 and "exactly one of --subnet and --port" in out.stderr
    assert "interface" in api_error(run(env, "router", "delete", "r-main", ok=False), 409)


def test_floating_ip_associate_and_disassociate(env: dict[str, str], networks: dict[str, str]) -> None:
    port = run_json(env, "port", "create", "p-fip", "--network", "net1", "--fixed-ip", "ip-address=10.0.0.33")
    fip = run_json(env, "floating-ip", "create", "--network", "ext")
    assert fip["port_id"] is None and fip["floating_ip_address"].startswith("203.0.113.")
    got = run_json(env, "floating-ip", "associate", fip["id"], "p-fip")
    assert (got["port_id"], got["fixed_ip_address"]) == (port["id"], "10.0.0.33") and got["router_id"]
    row = run(env, "floating-ip", "list", "-f", "value", "-c", "floating_ip_address", "-c", "fixed_ip_address").stdout
    assert row == f"{fip['floating_ip_address']} 10.0.0.33\n"
    got = run_json(env, "floating-ip", "disassociate", fip["id"])
    assert got["port_id"] is None and got["fixed_ip_address"] is None
    run(env, "floating-ip", "delete", fip["id"])
    assert run_json(env, "floating-ip", "list") == []


def test_security_group_rules(env: dict[str, str]) -> None:
    group = run_json(env, "security-group", "create", "web", "--description", "web servers")
    rule = run_json(env, "security-group-rule", "create", "web", "--protocol", "tcp", "--dst-port", "8000:8080",
                    "--remote-ip", "0.0.0.0/0")
    assert (rule["security_group_id"], rule["direction"], rule["port_range_min"], rule["port_range_max"]) == \
        (group["id"], "ingress", 8000, 8080)
    egress = run_json(env, "security-group-rule", "create", "web", "--egress", "--protocol", "udp", "--dst-port", "53")
    assert (egress["direction"], egress["port_range_min"], egress["port_range_max"]) == ("egress", 53, 53)
    rows = run(env, "security-group-rule", "list", "--group", "web", "-f", "value", "-c", "id").stdout.split()
    assert set(rows) >= {rule["id"], egress["id"]}
    assert run(env, "security-group-rule", "show", rule["id"], "-f", "value", "-c", "protocol").stdout == "tcp\n"
    run(env, "security-group-rule", "delete", rule["id"])
    assert rule["id"] not in {r["id"] for r in run_json(env, "security-group", "show", "web")["rules"]}
    run(env, "security-group", "set", "web", "--description", "changed")
    assert run(env, "security-group", "show", "web", "-f", "value", "-c", "description").stdout == "changed\n"
    run(env, "security-group", "delete", "web")


def test_server_interfaces(env: dict[str, str], networks: dict[str, str], tmp_path: Path) -> None:
    run(env, "image", "create", "if-img", "--file", str(make_qcow2(tmp_path / "if.qcow2", "8M")),
        "--disk-format", "qcow2")
    run(env, "flavor", "create", "if.tiny", "--vcpus", "1", "--ram", "64", "--disk", "1")
    run(env, "server", "create", "vm-if", "--flavor", "if.tiny", "--image", "if-img", "--network", "net1", "--wait")
    first = run_json(env, "server", "interfaces", "vm-if")
    assert [i["network_id"] for i in first] == [networks["net"]]
    added = run_json(env, "server", "add-interface", "vm-if", "--network", "net1", "--fixed-ip", "10.0.0.40")
    assert [ip["ip_address"] for ip in added["fixed_ips"]] == ["10.0.0.40"]
    assert len(run_json(env, "server", "interfaces", "vm-if")) == 2
    run(env, "server", "remove-interface", "vm-if", added["id"])
    assert run(env, "server", "interfaces", "vm-if", "-f", "value", "-c", "id").stdout == f"{first[0]['id']}\n"
    run(env, "server", "delete", "vm-if", "--wait")
