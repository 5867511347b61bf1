"""Sealed gossip packets: forged, tampered, replayed, stale and malformed packets are refused and counted."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hvd.cluster.gossip.codec import VERSION, PacketCodec, Refused, derive_key

KEY = b"test-cluster-key-0123456789"
NOW = 1_800_000_000.0
MSGS = [{"t": "ping", "seq": 1, "node": "b"}]


def test_round_trip_carries_sender_and_messages() -> None:
    packet = PacketCodec(KEY).seal("a", MSGS, NOW)
    assert PacketCodec(KEY).open(packet, NOW + 0.5) == ("a", MSGS)


def test_the_packet_key_is_derived_not_the_cluster_key_itself() -> None:
    assert derive_key(KEY) != KEY and len(derive_key(KEY)) == 32
    assert derive_key(KEY) != derive_key(KEY + b"x")


def test_nothing_readable_travels_in_clear() -> None:
    packet = PacketCodec(KEY).seal("host-a", MSGS, NOW)
    assert b"host-a" not in packet and b"ping" not in packet


def _refusal(codec: PacketCodec, packet: bytes, now: float = NOW) -> str:
    with pytest.raises(Refused) as info:
        codec.open(packet, now)
    return info.value.reason


def test_a_packet_sealed_under_another_cluster_key_is_refused_as_forged() -> None:
    receiver = PacketCodec(KEY)
    assert _refusal(receiver, PacketCodec(b"another-cluster-key-xxxx").seal("a", MSGS, NOW)) == "forged"
    assert receiver.refused["forged"] == 1


def test_a_tampered_packet_is_refused_as_forged() -> None:
    packet = bytearray(PacketCodec(KEY).seal("a", MSGS, NOW))
    packet[-20] ^= 0x01
    assert _refusal(PacketCodec(KEY), bytes(packet)) == "forged"


def test_a_replayed_packet_is_refused() -> None:
    receiver = PacketCodec(KEY)
    packet = PacketCodec(KEY).seal("a", MSGS, NOW)
    receiver.open(packet, NOW)
    assert _refusal(receiver, packet, NOW + 1) == "replayed"
    assert receiver.refused == {"replayed": 1}


def test_stale_and_future_packets_are_refused() -> None:
    receiver = PacketCodec(KEY, window_s=30)
    assert _refusal(receiver, PacketCodec(KEY).seal("a", MSGS, NOW - 31)) == "stale"
    assert _refusal(receiver, PacketCodec(KEY).seal("a", MSGS, NOW + 31)) == "stale"
    receiver.open(PacketCodec(KEY).seal("a", MSGS, NOW - 29), NOW)
    assert receiver.refused["stale"] == 2


def test_a_replay_after_the_cache_forgot_the_nonce_is_still_refused() -> None:
    receiver = PacketCodec(KEY, max_seen=2)
    sender = PacketCodec(KEY)
    first = sender.seal("a", MSGS, NOW)
    receiver.open(first, NOW)
    receiver.open(sender.seal("a", MSGS, NOW + 1), NOW + 1)
    receiver.open(sender.seal("a", MSGS, NOW + 2), NOW + 2)  # pushes the first nonce out
    assert _refusal(receiver, first, NOW + 3) == "replayed"


def test_malformed_packets_are_refused() -> None:
    receiver = PacketCodec(KEY)
    assert _refusal(receiver, b"") == "malformed"
    assert _refusal(receiver, b"\x02" + b"\x00" * 40) == "malformed"
    aead, nonce = AESGCM(derive_key(KEY)), b"\x00" * 12
    not_json = VERSION + nonce + aead.encrypt(nonce, b"not json", VERSION)
    assert _refusal(receiver, not_json) == "malformed"
    nonce2 = b"\x01" * 12
    no_sender = VERSION + nonce2 + aead.encrypt(nonce2, json.dumps({"ts": NOW, "m": []}).encode(), VERSION)
    assert _refusal(receiver, no_sender) == "malformed"
    assert receiver.refused["malformed"] == 4
