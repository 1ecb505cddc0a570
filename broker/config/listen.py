"""The addresses a command listens on: bound before anything else starts, and when one
cannot be, the one sentence saying which address and what to change.

A listener is bound first, before its app starts anything (the partner token fetch,
the upstream client session): a port in use then stops the command with nothing begun
and nothing to close, instead of a traceback after a token fetch. ``CannotListen``
names the address, why (in words, not an errno) and every way to choose another one:
the command's flag, the configuration key and its environment variable.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Final

from yarl import URL

# Connections the kernel queues for a listener until the server accepts them (the kernel
# caps it at net.core.somaxconn). aiohttp's default, 128, drops the SYNs of a burst (a
# load balancer opening its pool, every client reconnecting after a deploy) that arrives
# while the event loop is busy, and each dropped SYN costs its client a retry after 1 s.
BACKLOG: Final = 1024
# Why an address cannot be listened on, as an operator would say it.
_REASONS = {
    errno.EADDRINUSE: "address already in use (another process listens there)",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address",
}
# Errors of the host part, not the port: the way out is another host.
_HOST_ERRORS = frozenset({errno.EADDRNOTAVAIL})


@dataclass(frozen=True, slots=True)
class Address:
    """Where a listener binds, and what chooses its port and its host: command-line
    flags (``--port``) or configuration keys (``server.port``, whose environment
    variable is named too)."""

    host: str
    port: int
    port_via: tuple[str, ...] = ()
    host_via: tuple[str, ...] = ()

    @property
    def shown(self) -> str:
        host = self.host or "*"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


class CannotListen(Exception):
    """*address* cannot be listened on; ``sentence()`` says why and what to change."""

    # What a command that stops on it exits with (README, Commands): neither a bad
    # configuration (1) nor a usage error (2), and a supervisor may retry it.
    exit_code: ClassVar[int] = 3

    def __init__(self, address: Address, error: OSError) -> None:
        self.address = address
        self.errno = error.errno
        if isinstance(error, socket.gaierror):
            self.reason = f"cannot resolve the host name ({error.strerror})"
            self.host_problem = True
        else:
            self.reason = _REASONS.get(error.errno or 0) or (error.strerror or str(error))
            self.host_problem = error.errno in _HOST_ERRORS
        super().__init__(f"cannot listen on {address.shown}: {self.reason}")

    def sentence(self, flags: Mapping[str, str] | None = None) -> str:
        """One line: the address, why, and the ways to change it. *flags* maps a key to
        the command's flag that overrides it (``{"server.port": "--port"}``)."""
        via = self.address.host_via if self.host_problem else self.address.port_via
        ways: list[str] = []
        for name in via:
            if flags and name in flags:
                ways.append(flags[name])
            ways.append(name)
            if "." in name:  # a configuration key: its variable too
                ways.append("BROKER_" + name.replace(".", "_").upper())
        what = "host" if self.host_problem else "port"
        change = f"; choose another {what} with {_either(ways)}" if ways else ""
        return f"token-broker: cannot listen on {self.address.shown}: {self.reason}{change}"


def _either(ways: list[str]) -> str:
    return ways[0] if len(ways) == 1 else ", ".join(ways[:-1]) + " or " + ways[-1]


def bind(address: Address, *, reuse_port: bool = False) -> list[socket.socket]:
    """Sockets bound to every local address *address* resolves to (as asyncio's
    ``create_server`` binds them: ``SO_REUSEADDR``, IPv6 sockets IPv6-only), not yet
    listening; CannotListen when one cannot be bound (none is left open then)."""
    try:
        infos = socket.getaddrinfo(
            address.host or None,
            address.port,
            family=socket.AF_UNSPEC,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
    except socket.gaierror as exc:
        raise CannotListen(address, exc) from None
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:
                continue  # a family this machine lacks (IPv6 in some containers)
            bound.append(sock)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
    except OSError as exc:
        close(bound)
        raise CannotListen(address, exc) from None
    if not bound:
        raise CannotListen(address, OSError(errno.EAFNOSUPPORT, "no usable address family"))
    return bound


def close(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def url(host: str, sockets: list[socket.socket]) -> str:
    """The listener's URL as aiohttp's ``TCPSite`` names it: the configured host (all
    interfaces shown as 0.0.0.0) and the port really bound (``port = 0`` picks one)."""
    port: int = sockets[0].getsockname()[1]
    return str(URL.build(scheme="http", host=host or "0.0.0.0", port=port))  # noqa: S104
