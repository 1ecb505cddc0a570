"""A slow upstream: answers every request with fixed JSON after a fixed delay.

    python bench/delay_server.py --port P [--delay-ms 20] [--workers 2] [--body FILE]

nginx-light cannot wait before answering, so the 20 ms profile puts the wait here: a
raw ``asyncio.Protocol`` (uvloop when installed) that parses just enough HTTP/1.1
(request heads, ``Content-Length`` bodies, keep-alive) and schedules each answer with
``call_later``. Several processes share the port (SO_REUSEPORT). Its own ceiling is
measured as "upstream direct", so ratios against it stay honest.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import signal
import socket
from pathlib import Path
from typing import cast

_HEAD_END = b"\r\n\r\n"


def _response(body: bytes) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


class DelayProtocol(asyncio.Protocol):
    def __init__(self, response: bytes, delay: float) -> None:
        self._response = response
        self._delay = delay
        self._buffer = b""
        self._body_left = 0
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        while True:
            if self._body_left:
                taken = min(self._body_left, len(buffer))
                self._body_left -= taken
                buffer = buffer[taken:]
                if self._body_left:
                    break
            end = buffer.find(_HEAD_END)
            if end < 0:
                break
            head, buffer = buffer[:end].lower(), buffer[end + len(_HEAD_END) :]
            marker = head.find(b"\r\ncontent-length:")
            if marker >= 0:
                value = head[marker + 17 :].split(b"\r\n", 1)[0]
                self._body_left = int(value.strip() or b"0")
            self._loop.call_later(self._delay, self._answer, b"connection: close" in head)
        self._buffer = buffer

    def _answer(self, close: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(self._response)
        if close:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def _serve(port: int, response: bytes, delay: float) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    server = await loop.create_server(lambda: DelayProtocol(response, delay), sock=sock)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def _worker(port: int, response: bytes, delay: float) -> None:
    try:
        import uvloop  # noqa: PLC0415 - optional: the plain loop works, only slower
    except ImportError:
        asyncio.run(_serve(port, response, delay))
    else:
        uvloop.run(_serve(port, response, delay))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--body", type=Path, default=Path(__file__).parent / "payloads/invoice.json"
    )
    args = parser.parse_args()
    response = _response(args.body.read_bytes().strip())
    delay = args.delay_ms / 1000
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_worker, args=(args.port, response, delay))
        for _ in range(args.workers)
    ]
    for worker in workers:
        worker.start()

    def forward(signum: int, _frame: object) -> None:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for worker in workers:
        worker.join()


if __name__ == "__main__":
    main()
