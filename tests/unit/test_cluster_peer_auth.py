"""Peer request signatures: forged, stale and replayed requests are refused; the cache stays bounded."""

from __future__ import annotations

import time

import pytest

from hvd.cluster.http_transport import decode_batch, encode_batch
from hvd.cluster.peer_auth import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    FrameOpener,
    FrameSealer,
    PeerAuthError,
    PeerVerifier,
    sign_headers,
)
from hvd.cluster.raft.messages import AppendRequest, Entry, VoteRequest

KEY = b"k" * 32
PATH = "/internal/v1/raft/message"


def test_signed_request_is_accepted_once() -> None:
    v = PeerVerifier(KEY)
    headers = sign_headers(KEY, "n1", "POST", PATH, b"body", now=1000.0)
    assert v.verify("POST", PATH, headers, b"body", now=1001.0) == "n1"
    with pytest.raises(PeerAuthError, match="replayed"):
        v.verify("POST", PATH, headers, b"body", now=1002.0)


@pytest.mark.parametrize(
    ("method", "path", "body", "key"),
    [("POST", PATH, b"other body", KEY), ("POST", "/internal/v1/raft/propose", b"body", KEY),
     ("GET", PATH, b"body", KEY), ("POST", PATH, b"body", b"x" * 32)],
)
def test_any_change_breaks_the_signature(method: str, path: str, body: bytes, key: bytes) -> None:
    headers = sign_headers(key, "n1", "POST", PATH, b"body", now=1000.0)
    with pytest.raises(PeerAuthError, match="bad peer signature"):
        PeerVerifier(KEY).verify(method, path, headers, body, now=1000.0)


def test_missing_headers_and_stale_timestamps_are_refused() -> None:
    v = PeerVerifier(KEY)
    with pytest.raises(PeerAuthError, match="missing"):
        v.verify("POST", PATH, {}, b"", now=1000.0)
    old = sign_headers(KEY, "n1", "POST", PATH, b"", now=1000.0)
    with pytest.raises(PeerAuthError, match="window"):
        v.verify("POST", PATH, old, b"", now=1031.0)
    future = sign_headers(KEY, "n1", "POST", PATH, b"", now=1031.0)
    with pytest.raises(PeerAuthError, match="window"):
        v.verify("POST", PATH, future, b"", now=1000.0)
    tampered = dict(old, **{TIMESTAMP_HEADER: "1030.0"})
    with pytest.raises(PeerAuthError, match="bad peer signature"):
        v.verify("POST", PATH, tampered, b"", now=1030.0)


def test_identical_messages_in_the_same_instant_are_both_accepted() -> None:
    v = PeerVerifier(KEY)
    a = sign_headers(KEY, "n1", "POST", PATH, b"heartbeat", now=1000.0)
    b = sign_headers(KEY, "n1", "POST", PATH, b"heartbeat", now=1000.0)
    assert a[SIGNATURE_HEADER] != b[SIGNATURE_HEADER]  # the nonce differs
    v.verify("POST", PATH, a, b"heartbeat", now=1000.0)
    v.verify("POST", PATH, b, b"heartbeat", now=1000.0)


def test_full_cache_forgets_old_signatures_without_allowing_their_replay() -> None:
    v = PeerVerifier(KEY, max_entries=3)
    sent = [sign_headers(KEY, "n1", "POST", PATH, b"", now=1000.0 + i) for i in range(5)]
    for i, h in enumerate(sent):
        v.verify("POST", PATH, h, b"", now=1000.0 + i)
    assert len(v._seen) == 3
    for h in sent:
        with pytest.raises(PeerAuthError, match="replayed"):
            v.verify("POST", PATH, h, b"", now=1005.0)


def test_message_batches_round_trip() -> None:
    msgs = [VoteRequest(3, "a", "b", 10, 2, pre_vote=True),
            AppendRequest(3, "a", "b", 9, 2, (Entry(10, 3, data=b"\n{x}\n"),), 9, seq=4)]
    assert decode_batch(encode_batch(msgs)) == msgs


def test_stream_frames_cannot_be_forged_replayed_reordered_or_moved() -> None:
    path = "/internal/v1/raft/stream"
    v = PeerVerifier(KEY)
    headers = sign_headers(KEY, "n1", "GET", path, b"", now=time.time())
    node, opener = v.open_stream("GET", path, headers)
    nonce = headers[NONCE_HEADER]
    sealer = FrameSealer(KEY, nonce)
    first, second, third = sealer.seal(b"one"), sealer.seal(b"two"), sealer.seal(b"three")
    assert node == "n1" and opener.open(first) == b"one"
    with pytest.raises(PeerAuthError, match="bad frame"):
        opener.open(first)  # replayed on its own stream
    with pytest.raises(PeerAuthError, match="bad frame"):
        FrameOpener(KEY, nonce).open(third)  # out of order (the opener expects frame 0)
    _, other_stream = v.open_stream("GET", path, sign_headers(KEY, "n1", "GET", path, b"", now=time.time()))
    with pytest.raises(PeerAuthError, match="bad frame"):
        other_stream.open(first)  # moved to another stream
    with pytest.raises(PeerAuthError, match="bad frame"):
        FrameOpener(KEY, nonce).open(FrameSealer(b"x" * 32, nonce).seal(b"one"))  # another key
    tampered = bytearray(FrameSealer(KEY, nonce).seal(b"one"))
    tampered[-1] ^= 1
    with pytest.raises(PeerAuthError, match="bad frame"):
        FrameOpener(KEY, nonce).open(bytes(tampered))
    assert opener.open(second) == b"two"  # the stream itself goes on in order
    with pytest.raises(PeerAuthError, match="replayed"):
        v.open_stream("GET", path, headers)  # replaying the opening request


def test_precheck_refuses_from_the_headers_alone() -> None:
    v = PeerVerifier(KEY)
    fresh = sign_headers(KEY, "n1", "POST", PATH, b"body", now=1000.0)
    v.precheck(fresh, now=1001.0)  # a plausible request: its body is worth reading
    with pytest.raises(PeerAuthError, match="window"):
        v.precheck(fresh, now=2000.0)
    with pytest.raises(PeerAuthError, match="window"):
        v.precheck({**fresh, TIMESTAMP_HEADER: "nan"}, now=1000.0)
    with pytest.raises(PeerAuthError, match="malformed"):
        v.precheck({k: h for k, h in fresh.items() if k != NONCE_HEADER}, now=1000.0)
    v.verify("POST", PATH, fresh, b"body", now=1001.0)
    with pytest.raises(PeerAuthError, match="replayed"):
        v.precheck(fresh, now=1002.0)
