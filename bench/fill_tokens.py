"""Fill a broker's token cache: for each key, one session (init) and one proxied GET.

    python bench/fill_tokens.py --port P --count N [--start S] [--concurrency C]

Prints one JSON line: {"ok": ..., "failed": ..., "seconds": ..., "first_error": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
from servers import API_KEY


async def _fill_one(session: aiohttp.ClientSession, base: str, index: int, prefix: str) -> None:
    ids = {"customer_id": f"cus_{prefix}_{index:07d}", "invoice_id": f"inv_{prefix}_{index:07d}"}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with session.post(f"{base}/v1/checkout-auth/init", json=ids, headers=headers) as init:
        if init.status != 200:
            raise RuntimeError(f"init answered {init.status}")
        token = (await init.json())["token"]
    headers = {"Authorization": f"Bearer {token}"}
    async with session.get(f"{base}/checkout/invoice", headers=headers) as proxied:
        await proxied.read()
        if proxied.status != 200:
            raise RuntimeError(f"GET answered {proxied.status}")


async def fill(
    port: int, start: int, count: int, concurrency: int, prefix: str
) -> dict[str, object]:
    base = f"http://127.0.0.1:{port}"
    indexes = iter(range(start, start + count))
    ok = failed = 0
    first_error: str | None = None

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok, failed, first_error
        for index in indexes:
            try:
                await _fill_one(session, base, index, prefix)
            except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
                failed += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
            else:
                ok += 1

    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return {
        "ok": ok,
        "failed": failed,
        "seconds": time.monotonic() - started,
        "first_error": first_error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--prefix", default="mem")
    args = parser.parse_args()
    result = asyncio.run(fill(args.port, args.start, args.count, args.concurrency, args.prefix))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
