"""OpenSSH public keys: validation, fingerprints, generation."""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from hvd.errors import BadRequest

KEY_TYPES = frozenset(
    {
        "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)


def parse_public_key(text: str) -> tuple[str, bytes]:
    """(key type, key blob) of an OpenSSH public key line; BadRequest if it is not one."""
    parts = text.strip().split()
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise BadRequest("Keypair data is invalid: expected an OpenSSH public key ('ssh-ed25519 AAAA...')")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        (length,) = struct.unpack(">I", blob[:4])
        inner_type = blob[4 : 4 + length].decode()
    except (binascii.Error, struct.error, UnicodeDecodeError) as exc:
        raise BadRequest("Keypair data is invalid: the key body is not valid base64 key data") from exc
    if inner_type != parts[0] or len(blob) < 4 + length + 16:
        raise BadRequest("Keypair data is invalid: the key body does not match its type")
    return parts[0], blob


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint, as `ssh-keygen -l` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def generate_ed25519(comment: str) -> tuple[str, str]:
    """(public key line, private key in OpenSSH PEM) of a new ed25519 key."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{public.decode()} {comment}", private
