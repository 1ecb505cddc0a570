"""Fixtures for the command-line tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.redis.processes import MISSING_REDIS, RedisServer, free_port, redis_executable


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    yield started
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for `doctor`'s Redis checks (as tests/redis starts one)."""
    executable = redis_executable()
    if executable is None:
        pytest.fail(MISSING_REDIS)
    server = RedisServer(executable, free_port(), tmp_path_factory.mktemp("redis-cli"))
    server.start()
    try:
        yield server
    finally:
        server.kill()
