"""The header field names the broker reads and writes, in one place.

Each is multidict's ``istr``, as aiohttp's own ``hdrs`` names are, so that a multidict
finds it without case-folding it first; each is ``Final``, so that compiled modules
read it from a C static instead of looking a module attribute up on every use. The
values the broker sends in some of them (its ``Server`` and ``User-Agent``) are here
too. Methods stay aiohttp's (``hdrs.METH_*``).
"""

from __future__ import annotations

from typing import Final

from aiohttp import hdrs
from multidict import istr

from broker import __version__

ACCEPT: Final = hdrs.ACCEPT
ACCEPT_ENCODING: Final = hdrs.ACCEPT_ENCODING
ALLOW: Final = hdrs.ALLOW
ACCESS_CONTROL_ALLOW_HEADERS: Final = hdrs.ACCESS_CONTROL_ALLOW_HEADERS
ACCESS_CONTROL_ALLOW_METHODS: Final = hdrs.ACCESS_CONTROL_ALLOW_METHODS
ACCESS_CONTROL_ALLOW_ORIGIN: Final = hdrs.ACCESS_CONTROL_ALLOW_ORIGIN
ACCESS_CONTROL_EXPOSE_HEADERS: Final = hdrs.ACCESS_CONTROL_EXPOSE_HEADERS
ACCESS_CONTROL_MAX_AGE: Final = hdrs.ACCESS_CONTROL_MAX_AGE
ACCESS_CONTROL_REQUEST_METHOD: Final = hdrs.ACCESS_CONTROL_REQUEST_METHOD
AUTHORIZATION: Final = hdrs.AUTHORIZATION
CACHE_CONTROL: Final = hdrs.CACHE_CONTROL
CONNECTION: Final = hdrs.CONNECTION
CONTENT_ENCODING: Final = hdrs.CONTENT_ENCODING
CONTENT_LENGTH: Final = hdrs.CONTENT_LENGTH
CONTENT_TYPE: Final = hdrs.CONTENT_TYPE
EXPECT: Final = hdrs.EXPECT
ORIGIN: Final = hdrs.ORIGIN
PRAGMA: Final = hdrs.PRAGMA
REFERRER_POLICY: Final = istr("Referrer-Policy")
REQUEST_ID: Final = istr("X-Request-Id")
RETRY_AFTER: Final = hdrs.RETRY_AFTER
SERVER: Final = hdrs.SERVER
TRANSFER_ENCODING: Final = hdrs.TRANSFER_ENCODING
USER_AGENT: Final = hdrs.USER_AGENT
VARY: Final = hdrs.VARY
WWW_AUTHENTICATE: Final = hdrs.WWW_AUTHENTICATE

# What the broker calls itself: no library versions (they would tell an attacker which
# published bugs to try), and its own version only where the vendor is the reader.
SERVER_NAME: Final = "token-broker"
BROKER_USER_AGENT: Final = f"token-broker/{__version__}"
