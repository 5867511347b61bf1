"""Host-side networking in Neutron's model (linuxbridge flavour), independent of the catalog.

* `hvd.net.model`   - frozen specs (networks, subnets, ports, security groups, routers) and names.
* `hvd.net.plan`    - pure `plan_host(desired, existing)` / `plan_orphans(...)` -> list of steps.
* `hvd.net.apply`   - `HostNetwork`: observe, apply steps, converge, supervise dnsmasq.
* `hvd.net.fake`    - `FakeHost`, an in-memory host that applies steps like the kernel would.
* adapters: `links` (netlink), `dhcp` (dnsmasq), `nft` (security groups, NAT), `router`.
"""
