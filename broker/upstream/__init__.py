"""The upstream: the client session and call accounting, the transport seam for proxied
calls with its two implementations side by side (aiohttp's client in ``transport``, the
lean httptools pool in ``lean``), and the calls made with the partner's credentials."""
