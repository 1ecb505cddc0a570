"""Tokens at rest: AES-256-GCM sealing bound to the Redis key a value is stored under.

A sealed value reads ``tb1.<key id>.<nonce><ciphertext+tag>``. The key id (the first
8 hex characters of the key's SHA-256) says which configured key sealed it, so keys
can rotate: the first key seals, every key opens. The associated data is the header
plus the Redis key name, so a value copied under another key, or re-labelled with
another key id, fails authentication instead of decrypting.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = b"tb1"
KEY_BYTES = 32
NONCE_BYTES = 12  # the GCM standard; random nonces are safe far beyond our volumes
KEY_ID_CHARS = 8
_HEADER_BYTES = len(VERSION) + 1 + KEY_ID_CHARS + 1


class SealBroken(Exception):
    """A stored value that cannot be opened: tampered, moved, or sealed by an unknown key."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:KEY_ID_CHARS]


class Sealer:
    """Seals with the first key; opens with whichever configured key the value names."""

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        if not keys:
            raise ValueError("at least one encryption key is required")
        if any(len(key) != KEY_BYTES for key in keys):
            raise ValueError("encryption keys must be 32 bytes (AES-256)")
        self._sealing_id = key_id(keys[0]).encode()
        # Later duplicates of an id never shadow the first (sealing) key.
        self._ciphers: dict[bytes, AESGCM] = {}
        for key in keys:
            self._ciphers.setdefault(key_id(key).encode(), AESGCM(key))

    def __repr__(self) -> str:
        return f"Sealer(key_ids={[kid.decode() for kid in self._ciphers]})"

    def seal(self, name: str, plaintext: bytes) -> bytes:
        header = VERSION + b"." + self._sealing_id + b"."
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self._sealing_id].encrypt(nonce, plaintext, header + name.encode())
        return header + nonce + sealed

    def open(self, name: str, blob: bytes) -> bytes:
        header = blob[:_HEADER_BYTES]
        version, _, rest = header.partition(b".")
        kid = rest[:KEY_ID_CHARS]
        if version != VERSION or not header.endswith(b".") or len(blob) <= _HEADER_BYTES:
            raise SealBroken("not a sealed value")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise SealBroken(f"sealed by an unknown key ({kid.decode(errors='replace')})")
        body = blob[_HEADER_BYTES:]
        try:
            return cipher.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], header + name.encode())
        except InvalidTag:
            raise SealBroken("tampered, moved to another key, or wrong key") from None
