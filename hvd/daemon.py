"""Composition root: the only module that names concrete classes.

Start-up is ordered (catalog → identity → host record → API listener → READY=1) and shutdown
runs in reverse, aiohttp cleanup_ctx style.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from aiohttp import web

import hvd
from hvd import systemd
from hvd.api.app import build_app
from hvd.api.forward import PEERS
from hvd.api.internal import PEER_SERVICE, PeerEndpoint, StartupListener
from hvd.api.internal_join import JoinSigner
from hvd.api.services import ApiServices
from hvd.api.v1.admin import GOSSIP
from hvd.api.v1.events import EVENTS
from hvd.api.v1.images import IMAGE_STORE
from hvd.api.v1.netcommon import NETWORK
from hvd.api.v1.servers import COMPUTE
from hvd.api.v1.volumes import VOLUMES
from hvd.catalog.purge import run_purges
from hvd.catalog.service import Catalog
from hvd.cluster.cert_trust import PeerTrust
from hvd.cluster.coordinator import RaftCoordinator
from hvd.cluster.event_relay import EventRelay
from hvd.cluster.fencing import Fencer
from hvd.cluster.gossip import hostreport
from hvd.cluster.gossip import metrics as gossip_metrics
from hvd.cluster.gossip.core import MemberEvent
from hvd.cluster.gossip.service import GossipService, core_config
from hvd.cluster.keys import PeerKeys, peer_key
from hvd.cluster.member import open_raft_coordinator
from hvd.cluster.peer_auth import PeerVerifier
from hvd.cluster.peers import PeerCaller
from hvd.cluster.protocol_gate import ProtocolGate
from hvd.cluster.qemu_tls import install as install_qemu_x509
from hvd.cluster.tls import Contexts, load_contexts
from hvd.compute.hostinfo import host_register_command
from hvd.compute.manager import ComputeManager
from hvd.compute.reconcile import Reconciler
from hvd.compute.service import ComputeService
from hvd.config import Config
from hvd.drivers.base import ComputeDriver
from hvd.errors import Conflict, ServiceUnavailable
from hvd.events import EventBus
from hvd.health import Health, State, dead, task_status
from hvd.identity.policy import Policy
from hvd.identity.service import IdentityService, now_iso
from hvd.net.service import NetworkService
from hvd.scheduler.placement import Placement
from hvd.storage import transfer
from hvd.storage.image_cache import ImageCache
from hvd.storage.image_store import ImageStore
from hvd.storage.volumes.backend import VolumeBackend
from hvd.storage.volumes.file_backend import FileBackend
from hvd.storage.volumes.lvm_backend import LvmBackend
from hvd.storage.volumes.nbd import NbdExports
from hvd.storage.volumes.service import VolumeService

log = logging.getLogger(__name__)


def make_driver(config: Config) -> ComputeDriver:
    """The configured compute driver (the only place that names the concrete classes)."""
    instances = Path(config.host.instances_path)
    if config.compute.driver == "fake":
        from hvd.drivers.fake import FakeDriver

        return FakeDriver(instances)
    from hvd.drivers.libvirt.driver import LibvirtDriver

    vnc = config.compute.vnc_listen if config.compute.vnc_enabled else None
    return LibvirtDriver(instances, uri=config.libvirt.uri, virt_type=config.libvirt.virt_type, vnc_listen=vnc)


def make_network(config: Config, catalog: Catalog) -> NetworkService:
    """This host's network service over the configured backend (linux, or fake with the fake driver)."""
    from hvd.net.service import FakeHostNetwork, HostAdapter, OwnedNames

    net = config.network
    backend = net.backend if net.backend != "auto" else ("fake" if config.compute.driver == "fake" else "linux")
    dhcp_dir = net.dhcp_dir or str(Path(config.host.data_dir) / "dhcp")
    adapter: HostAdapter = FakeHostNetwork(net.netns_prefix, dhcp_dir)
    metadata = None
    if backend == "linux":
        from hvd.net.apply import HostNetwork
        from hvd.net.metadata import MetadataServer

        adapter = HostNetwork(net.host_netns or None, dhcp_dir=dhcp_dir, netns_prefix=net.netns_prefix)
        if net.metadata_enabled:
            metadata = MetadataServer(catalog, config.host.availability_zone)
    owned = None if net.claim_all_devices else OwnedNames(Path(config.host.data_dir) / "network-owned.json")
    return NetworkService(config, catalog, adapter, owned, metadata)


async def start_volumes(config: Config, catalog: Catalog, events: EventBus,
                        manager: ComputeManager) -> VolumeService | None:
    """This host's volume service over its configured backends (None with [volumes] enabled = false):
    default type, capacity report, orphan removal, then the loop that (re)does pending work."""
    if not config.volumes.enabled:
        return None
    data_dir = Path(config.host.data_dir)
    timeout = config.volumes.operation_timeout_s
    backends: dict[str, VolumeBackend] = {}
    for b in config.volumes.backends:
        if b.driver == "lvm":
            backends[b.name] = LvmBackend(b.name, b.volume_group, b.thin_pool, timeout)
        else:
            root = Path(b.path) if b.path else data_dir / "volumes"
            backends[b.name] = FileBackend(b.name, root, b.format, timeout)
    backup_root = Path(config.volumes.backup_dir) if config.volumes.backup_dir else data_dir / "backups"
    service = VolumeService(config, catalog, events, backends, backup_root, manager.cached_image, manager.store)
    service.peers = manager.peers  # an uploaded volume's image is copied to peers like an API upload
    await service.start()
    return service


async def register_host(config: Config, catalog: Catalog, driver: ComputeDriver, api_url: str) -> None:
    """Record this host and its resources (from the driver) in the catalog, at every start."""
    res = await driver.host_resources()
    cmd = host_register_command(
        config,
        api_url,
        now_iso(),
        vcpus=res.vcpus,
        memory_mb=res.memory_mib,
        disk_gb=res.disk_gb,
        hypervisor_type=res.hypervisor_type,
        hypervisor_version=str(res.hypervisor_version),
        cpu_model=res.cpu_model,
        arch=res.arch,
    )
    await catalog.propose(cmd)


def _own_url(config: Config, api_url: str) -> str:
    """The peer API URL others reach this host at (its entry in cluster.peers, if listed)."""
    return config.cluster.peer_urls().get(config.node_id, api_url)


def make_gossip(config: Config, catalog: Catalog, api_url: str,
                client_ssl: ssl.SSLContext | None = None, peer_keys: PeerKeys | None = None) -> GossipService:
    """Gossip over UDP with the cluster's members as seeds; alone (no peers) it runs without a socket."""
    seeds = _member_addresses(catalog)

    def all_seeds() -> dict[str, str]:
        return {**config.cluster.peer_urls(), **seeds()}  # configured peers, then the live Raft membership

    report = hostreport.initial_report(config, _own_url(config, api_url))
    if not config.cluster.peers:
        return GossipService(config.host_name, core_config(config.gossip), report)
    g = config.gossip
    host, port = g.bind_address or config.api.listen, g.port or config.api.port
    advertise = g.advertise_address
    if not advertise and host in ("0.0.0.0", "::", ""):
        own = config.cluster.peer_urls().get(config.node_id)
        advertise = (urlparse(own).hostname if own else None) or config.host_name
    if advertise:
        advertise = socket.gethostbyname(advertise) if ":" not in advertise else advertise  # once, at start
    return GossipService(config.host_name, core_config(g), report, config.cluster.cluster_key.encode(),
                         bind=(host, port), advertise_host=advertise, seeds=all_seeds, ssl_context=client_ssl,
                         peer_keys=peer_keys,
                         node_id=config.node_id)


async def _report_loop(config: Config, catalog: Catalog, driver: ComputeDriver, gossip: GossipService,
                       api_url: str) -> None:
    """Recompute this host's resource report now and then; gossip tells others when it changed."""
    while True:
        try:
            res = await driver.host_resources()
            gossip.update_report(await hostreport.current_report(config, catalog, res, _own_url(config, api_url)))
        except Exception:  # the next round retries; reporting must not end because one read failed
            log.exception("resource report round failed")
        await asyncio.sleep(config.gossip.report_interval_s)


def _publish_host_state(events: EventBus) -> Callable[[MemberEvent], None]:
    def publish(event: MemberEvent) -> None:
        if event.state != event.previous:
            events.publish("host.state", member=event.name, state=event.state, previous=event.previous,
                           incarnation=event.incarnation)

    return publish


STARTUP_LISTENER = "startup_listener"
BUILD_RECOVERY_INTERVAL_S = 5.0


def open_catalog(config: Config, data_dir: Path, client_ssl: ssl.SSLContext | None = None,
                 peer_keys: PeerKeys | None = None) -> tuple[Catalog, RaftCoordinator]:
    """The catalog replicated by embedded Raft; a host without peers is a one-voter cluster.
    ``peer_keys`` (signing Raft streams) follow the protocol gate's level from here on."""
    catalog = Catalog.open_raft(
        data_dir / "catalog.db",
        lambda db, state: open_raft_coordinator(config.cluster, config.node_id, data_dir / "raft.db", db, state,
                                                ssl_context=client_ssl, peer_keys=peer_keys),
    )
    coordinator = catalog.coordinator
    assert isinstance(coordinator, RaftCoordinator)
    # rolling upgrades: nothing is proposed that a member's older build could not apply
    gate = coordinator.gate = ProtocolGate(config.node_id, hostreport.advertised_protocol(config),
                                           coordinator.member_ids)
    if peer_keys is not None:  # legacy (0.1.0) or derived peer key, by the cluster's usable level
        peer_keys.follow(lambda: gate.cluster_level().usable)
    return catalog, coordinator


async def bootstrap_identity(config: Config, identity: IdentityService, openrc: Path, api_url: str,
                             cacert: str = "") -> None:
    """Create the admin on a new cluster. Members starting together may race: the first command
    of the bootstrap (the admin project) decides, and the others find it taken."""
    try:
        await identity.bootstrap(config.identity.admin_password, openrc, api_url, cacert)
    except Conflict:
        log.info("identity was bootstrapped by another cluster member")


async def wait_for_cluster(coordinator: RaftCoordinator) -> None:
    """Wait (as long as it takes: members of a new cluster start one by one) until this member
    has caught up with a leader, so start-up decisions like "no users yet" are the cluster's."""
    while True:
        try:
            await coordinator.read_barrier()
            return
        except ServiceUnavailable as exc:
            if coordinator.health().state is State.DEAD:
                raise  # the Raft loop stopped for good (logged): waiting longer cannot help
            log.warning("waiting for a Raft leader: %s", exc.message)


def listen_socket(config: Config) -> socket.socket:
    """The API's listening TCP socket (bound early in a cluster: peers reach us during start-up)."""
    family = socket.AF_INET6 if ":" in config.api.listen else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.api.listen, config.api.port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def running_services(config: Config, listener: socket.socket | None = None) -> AsyncIterator[ApiServices]:
    """Start every service in order; stop them in reverse on exit.

    With ``listener`` (a clustered daemon) the peer routes are served on it from the moment Raft
    runs, because the start-up writes below go through the leader; ``serve`` hands the socket
    over to the public app, then closes the start-up listener (``extra[STARTUP_LISTENER]``).
    """
    data_dir = Path(config.host.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    Path(config.host.instances_path).mkdir(parents=True, exist_ok=True)
    tls = load_contexts(config)  # None: plain HTTP (loopback, or the insecure_plaintext opt-out)
    client_ssl = tls.client if tls is not None else None
    api_url = f"{'https' if tls else 'http'}://{config.api.listen}:{config.api.port}"
    key = config.cluster.cluster_key.encode()
    peer_keys = PeerKeys(key, legacy_allowed=tls is None)  # one choice for every signer and verifier here
    catalog, coordinator = open_catalog(config, data_dir, client_ssl, peer_keys)
    startup: StartupListener | None = None
    gossip: GossipService | None = None
    purges: asyncio.Task[None] | None = None
    health = Health()  # what /healthz and the watchdog look at
    try:
        await coordinator.start()
        health.add("raft", coordinator.health)
        endpoint = PeerEndpoint(coordinator, PeerVerifier(peer_keys) if key else None,
                                require_client_cert=tls is not None, join=_join_signer(tls, key, catalog),
                                trust=PeerTrust(catalog) if tls is not None else None)
        if listener is not None:
            startup = StartupListener(endpoint, listener, tls.server if tls is not None else None)
            await startup.start()
        # before waiting for Raft: liveness does not depend on a quorum (a report follows the driver)
        gossip = make_gossip(config, catalog, api_url, client_ssl, peer_keys)
        await gossip.start()
        coordinator.add_conf_listener(_leave_gossip_when_removed(config.node_id, gossip))
        endpoint.gossip = gossip
        if coordinator.gate is not None:
            coordinator.gate.use_gossip(gossip)  # the other members' protocol levels
        gossip_metrics.expose(gossip)
        await wait_for_cluster(coordinator)
        identity = IdentityService(catalog, config.identity.token_ttl_s)
        openrc = Path(config.identity.openrc_path or data_dir / "openrc")
        await bootstrap_identity(config, identity, openrc, api_url, str(tls.files.ca_cert) if tls else "")
        purges = asyncio.create_task(run_purges(catalog))  # expired tokens, old instance actions (leader)
        async with running_compute(config, catalog, api_url, health, gossip, client_ssl, peer_keys) as extra:
            extra[PEER_SERVICE] = endpoint
            extra[GOSSIP] = gossip
            extra[STARTUP_LISTENER] = startup
            policy = Policy(config.identity.policy)
            extra[COMPUTE].policy = policy
            yield ApiServices(config=config, catalog=catalog, identity=identity, policy=policy, api_url=api_url,
                              extra=extra, health=health)
    finally:
        if purges is not None:
            purges.cancel()
        if gossip is not None:
            await gossip.stop()  # announces "left" to every live member
            gossip_metrics.expose(None)
        if startup is not None:
            await startup.close()
        await catalog.coordinator.stop()
        catalog.close()


def _join_signer(tls: Contexts | None, key: bytes, catalog: Catalog) -> JoinSigner | None:
    """Joining hosts get certificates from members (those holding the CA key sign) when TLS is on."""
    if tls is None or not key:
        return None
    return JoinSigner(key, tls.files, catalog.propose)


def _member_addresses(catalog: Catalog) -> Callable[[], dict[str, str]]:
    """node id -> peer URL, as the Raft membership gives them (empty for a one-voter catalog)."""
    coordinator = catalog.coordinator

    def addresses() -> dict[str, str]:
        if not isinstance(coordinator, RaftCoordinator):
            return {}
        return {m["id"]: m["address"] for m in coordinator.members() if m["address"]}

    return addresses


def _leave_gossip_when_removed(node_id: str, gossip: GossipService) -> Callable[[Any], None]:
    """A membership without this node, after one with it: this host was removed from the cluster,
    so it leaves gossip too (the others see it "left")."""
    was_member = False
    leaving: set[asyncio.Task[None]] = set()

    def on_conf(conf: Any) -> None:
        nonlocal was_member
        if node_id in conf.members():
            was_member = True
        elif was_member:
            was_member = False
            log.warning("this host was removed from the cluster: leaving gossip")
            task = asyncio.get_running_loop().create_task(gossip.stop())
            leaving.add(task)
            task.add_done_callback(leaving.discard)

    return on_conf


async def _cluster_upkeep(service: ComputeService) -> None:
    """Every few seconds: builds whose placement or build call was lost are finished; copies of
    deleted images leave this host's store."""
    store = service.manager.store
    while True:
        await asyncio.sleep(BUILD_RECOVERY_INTERVAL_S)
        try:
            await service.builds.recover()
            statuses = await service.catalog.read(lambda c: dict(c.execute("SELECT id, status FROM images")))
            for image_id in await asyncio.to_thread(transfer.prune, store, statuses):
                log.info("removed this host's copy of deleted image %s", image_id)
        except Exception:  # a failed round is retried on the next one; it must not end the loop
            log.exception("cluster upkeep round failed")


@contextlib.asynccontextmanager
async def running_compute(
    config: Config, catalog: Catalog, api_url: str, health: Health | None = None,
    gossip: GossipService | None = None, client_ssl: ssl.SSLContext | None = None,
    peer_keys: PeerKeys | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Driver → host record → image store/cache → manager → placement → crash repair → sync loop."""
    events = EventBus(host=config.host_name)
    driver = make_driver(config)
    await driver.start()
    sync: asyncio.Task[None] | None = None
    recovery: asyncio.Task[None] | None = None
    fencing: asyncio.Task[None] | None = None
    reporting: asyncio.Task[None] | None = None
    peers: PeerCaller | None = None
    relay: EventRelay | None = None
    service: ComputeService | None = None
    network: NetworkService | None = None
    volume_service: VolumeService | None = None
    exports: NbdExports | None = None
    try:
        await register_host(config, catalog, driver, api_url)
        store = ImageStore(Path(config.host.data_dir) / "images")
        cache = ImageCache(Path(config.host.instances_path), config.compute.force_raw_images)
        manager = ComputeManager(config, catalog, driver, store, cache, events)
        network = make_network(config, catalog)
        await network.start()
        manager.network = network
        host = config.host_name
        # up = alive in gossip (the host record's enabled flag is the ComputeFilter's other half);
        # without gossip (tests composing services alone) only this host is known up
        is_up = gossip.is_alive if gossip is not None else (lambda name: name == host or peers is not None)
        placement = Placement(config, catalog, is_up=is_up)
        if gossip is not None:
            gossip.on_change(_publish_host_state(events))
            reporting = asyncio.create_task(_report_loop(config, catalog, driver, gossip, api_url))
        service = ComputeService(config, catalog, Policy(config.identity.policy), manager, placement, events)
        if config.cluster.cluster_key:
            keys = peer_keys or peer_key(config.cluster.cluster_key.encode())  # alone: the derived key
            peers = PeerCaller(host, config.node_id, keys, catalog,
                               _member_addresses(catalog), client_ssl)
            await peers.start()
            service.builds.peers = peers
            manager.peers = peers
            service.migrations.peers = peers
            service.moves.peers = peers
            relay = EventRelay(events, peers, catalog)
            relay.install()
        reconciler = Reconciler(service)
        await reconciler.startup()
        sync = asyncio.create_task(reconciler.run(config.compute.sync_power_state_interval_s))
        if health is not None:
            health.add("power_sync", lambda: task_status(sync, reconciler.status))
        recovery = asyncio.create_task(_cluster_upkeep(service))
        if peers is not None:  # one host alone has nothing to fence and nowhere to evacuate to
            fencing = asyncio.create_task(Fencer(config, service, reconciler, gossip).run())
        volume_service = await start_volumes(config, catalog, events, manager)
        service.volumes.volume_host = volume_service  # attach, online extend, delete on termination
        if peers is not None:  # volumes of other hosts over NBD, and this host's volumes for them
            listen = NbdExports.listen_address(config.cluster.peer_urls().get(config.node_id), config.api.listen)
            qemu_x509 = await asyncio.to_thread(install_qemu_x509, config)  # None without [tls]: plain NBD
            exports = NbdExports(host, listen, Path(config.host.data_dir) / "nbd", catalog, volume_service, peers,
                                 qemu_x509)
            await exports.start()
            service.volumes.exports = exports
        yield {COMPUTE: service, IMAGE_STORE: store, EVENTS: events, NETWORK: network, PEERS: peers,
               VOLUMES: volume_service}
    finally:
        for task in (sync, recovery, reporting, fencing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if relay is not None:
            await relay.close()
        if peers is not None:
            await peers.close()
        if service is not None:
            await service.drain(timeout=10)
        if network is not None:
            await network.stop()
        if exports is not None:
            await exports.stop()  # supervision only: the exports keep serving guests on other hosts
        if volume_service is not None:
            await volume_service.stop()
        await driver.close()


async def serve(config: Config) -> int:
    """Run the daemon until SIGTERM/SIGINT (exit code 0) or until one of its loops dies for good
    (logged; exit code 1, so that systemd restarts it)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    listener = listen_socket(config) if config.cluster.peers else None
    tls = load_contexts(config)
    server_ssl = tls.server if tls is not None else None
    async with contextlib.AsyncExitStack() as stack:
        if listener is not None:
            stack.callback(listener.close)
        starting = asyncio.ensure_future(stack.enter_async_context(running_services(config, listener)))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not starting.done():
            # e.g. still waiting for a quorum: unwinding start-up stops whatever had started
            log.info("stop requested during start-up")
            systemd.notify("STOPPING=1")
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return 0
        services = starting.result()
        app = build_app(services)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site: web.BaseSite
        if listener is not None:
            site = web.SockSite(runner, listener, ssl_context=server_ssl)
        else:
            site = web.TCPSite(runner, config.api.listen, config.api.port, reuse_address=True, ssl_context=server_ssl)
        await site.start()
        startup = services.extra.pop(STARTUP_LISTENER, None)
        if startup is not None:
            await startup.close()  # the public app accepts on the same socket now
        log.info("hvd %s listening on %s (host %s)", hvd.__version__, services.api_url, config.host_name)
        systemd.notify("READY=1")
        interval = systemd.watchdog_interval()
        watchdog = (asyncio.create_task(systemd.watchdog_loop(interval, lambda: not dead(services.health.check())))
                    if interval else None)
        died = asyncio.ensure_future(services.health.wait_dead())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({died, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if died.done():
                for name, reason in died.result().items():
                    log.critical("the %s loop died (%s): exiting so that the service manager restarts hvd",
                                 name, reason)
                return 1
            return 0
        finally:
            died.cancel()
            stopping.cancel()
            log.info("shutting down")
            systemd.notify("STOPPING=1")
            if watchdog is not None:
                watchdog.cancel()
            await runner.cleanup()


def run(config: Config) -> None:
    """Entry point of `hvd daemon`: uvloop + serve()."""
    import uvloop

    code = uvloop.run(serve(config))
    if code:
        raise SystemExit(code)
