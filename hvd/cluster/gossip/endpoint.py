"""The asyncio UDP socket under gossip: sends sealed packets, hands received ones over. No policy here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

Addr = tuple[str, int]
MAX_PACKET = 65_507  # the largest UDP payload; a packet above the MTU is fragmented by the kernel


class UdpEndpoint(asyncio.DatagramProtocol):
    """One bound UDP socket; ``on_packet(data, addr)`` runs in the loop for every datagram."""

    def __init__(self, on_packet: Callable[[bytes, Addr], None]) -> None:
        self._on_packet = on_packet
        self._transport: asyncio.DatagramTransport | None = None
        self.send_errors = 0

    async def open(self, host: str, port: int) -> Addr:
        """Bind and return the bound (host, port)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self._transport = transport
        sockname = transport.get_extra_info("sockname")
        return str(sockname[0]), int(sockname[1])

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._on_packet(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a stopped peer lands here: expected, counted, not logged each time
        self.send_errors += 1

    def send(self, data: bytes, addr: Addr) -> None:
        if self._transport is None or len(data) > MAX_PACKET:
            self.send_errors += 1
            return
        try:
            self._transport.sendto(data, addr)
        except OSError:
            self.send_errors += 1

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
