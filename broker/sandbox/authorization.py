"""Parsing of ``Authorization`` header values (Basic and Bearer); no policy here."""

from __future__ import annotations

import base64
import binascii


def _split(header: str | None, scheme: str) -> str | None:
    if header is None:
        return None
    given, _, value = header.partition(" ")
    # RFC 9110: the scheme is case-insensitive; the credentials are not.
    if given.lower() != scheme or not value.strip():
        return None
    return value.strip()


def bearer_token(header: str | None) -> str | None:
    return _split(header, "bearer")


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """``(user, password)`` from a Basic header, or None when it does not decode."""
    encoded = _split(header, "basic")
    if encoded is None:
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    if not colon:
        return None
    return user, password
