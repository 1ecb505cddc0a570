"""Which raw request targets may be forwarded, checked on the exact bytes we forward.

The path is never decoded or normalised before forwarding, so the check runs on the
raw target as the client sent it: what is checked is what is forwarded.
"""

from __future__ import annotations

import re

from broker.errors import BadRequest, NotFound

# RFC 3986 pchar without "%" (handled below) and without ";" (matrix parameters are
# a classic path-confusion vector and no SDK route uses them).
_SEGMENT = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@]+")
_PCT = re.compile(r"%[0-9A-Fa-f]{2}")
# Encoded bytes that would change the path's structure or smuggle controls upstream.
_FORBIDDEN_ESCAPES = frozenset(
    {"%2f", "%5c", "%2e", "%00", "%3b", "%3f", "%23", "%25"}
    | {f"%{b:02x}" for b in range(0x20)}
    | {"%7f"}
)
# Query bytes: RFC 3986 query chars (pchar, "/", "?"), kept byte for byte.
_QUERY = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
MAX_TARGET_LENGTH = 2048
# The common case in one match: plain segments (no escapes, no "." or ".." segment)
# and a query without escapes. Anything else takes the segment-by-segment checks.
_PLAIN_PATH = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9\-._~!$&'()*+,=:@]+)+")
_PLAIN_QUERY = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*")


def split_target(raw_target: str) -> tuple[str, str]:
    """Split a raw request target into (path, query) without decoding either."""
    path, sep, query = raw_target.partition("?")
    return path, query if sep else ""


def check_proxy_target(raw_target: str, prefixes: tuple[str, ...]) -> tuple[str, str]:
    """Return (raw_path, raw_query) if the target may be forwarded, else raise.

    Refused: dot segments (plain or encoded), encoded slashes and backslashes, empty
    segments, control characters, fragments, and anything outside ``prefixes``.
    """
    if len(raw_target) > MAX_TARGET_LENGTH:
        raise BadRequest("The request path is too long.")
    path, query = split_target(raw_target)
    if not path.startswith(prefixes):  # str.startswith takes the whole tuple at once
        raise NotFound("path outside the proxied prefixes")
    if _PLAIN_PATH.fullmatch(path) and _PLAIN_QUERY.fullmatch(query):
        return path, query
    segments = path[1:].split("/")
    for segment in segments:
        if not _valid_segment(segment):
            raise BadRequest("The request path is not allowed.")
    if _QUERY.fullmatch(query) is None or not _valid_escapes(query, allow_any=True):
        raise BadRequest("The request query is malformed.")
    return path, query


def _valid_segment(segment: str) -> bool:
    if segment in {"", ".", ".."}:
        return False
    plain = _PCT.sub("", segment)
    if "%" in plain or (plain and _SEGMENT.fullmatch(plain) is None):
        return False
    return _valid_escapes(segment, allow_any=False)


def _valid_escapes(text: str, *, allow_any: bool) -> bool:
    if "%" not in text:
        return True
    escapes = _PCT.findall(text)
    if text.count("%") != len(escapes):
        return False  # a lone "%" or a bad escape
    for escape in escapes:
        lowered = escape.lower()
        control = int(lowered[1:], 16) < 0x20 or lowered == "%7f"
        if control or (not allow_any and lowered in _FORBIDDEN_ESCAPES):
            return False
    return True
