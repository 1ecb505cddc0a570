"""``serve``'s browser-facing flags: --cors-origin (with --config and --sandbox),
--demo-port and --sdk-url (with --sandbox only)."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from broker.cli.main import load_for_serve, main
from tests.cli.commands import BROKER, start_broker, write_config
from tests.conftest import MakeSandbox
from tests.helpers import API_KEY, auth

PREFLIGHT = {
    "Access-Control-Request-Method": "GET",
    "Access-Control-Request-Headers": "authorization",
}


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", *argv])
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sandbox", "--cors-origin", "*"], "no wildcard"),
        (["--sandbox", "--cors-origin", "https://shop.example/checkout"], "no path"),
        (["--sandbox", "--cors-origin", "shop.example"], "exact origin"),
        (["--sandbox", "--demo-port", "70000"], "not a port"),
        (["--sandbox", "--demo-port", "-1"], "not a port"),
        (["--sandbox", "--sdk-url", "/nonexistent/index.mjs"], "neither an http(s) URL"),
        (["--sandbox", "--sdk-url", "ftp://cdn.example/index.mjs"], "neither an http(s) URL"),
        (["--sandbox", "--sdk-url", "https://"], "not a usable"),
        (["--config", "broker.toml", "--demo-port", "9000"], "need --sandbox"),
        (["--config", "broker.toml", "--sdk-url", "https://cdn.example/x.mjs"], "need --sandbox"),
    ],
)
def test_bad_flags_are_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert message in usage_error(capsys, *argv)


def test_cors_origins_add_to_the_configured_ones(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, "http://127.0.0.1:1", 8080, '[cors]\nallowed_origins = ["https://a.example"]'
    )
    origins = ("https://b.example:8443", "https://a.example", "http://localhost:3000")
    settings = load_for_serve(config, {}, None, None, origins)
    assert settings.cors.allowed_origins == (
        "https://a.example",
        "https://b.example:8443",
        "http://localhost:3000",
    )
    assert load_for_serve(config, {}, None, None).cors.allowed_origins == ("https://a.example",)


async def preflight(http: aiohttp.ClientSession, url: str, origin: str) -> int:
    async with http.options(
        f"{url}/checkout/invoice", headers={"Origin": origin, **PREFLIGHT}
    ) as response:
        return response.status


async def test_serve_config_allows_each_cors_origin_flag(
    tmp_path: Path,
    make_sandbox: MakeSandbox,
    unused_tcp_port_factory: Callable[[], int],
    processes: list[asyncio.subprocess.Process],
) -> None:
    sandbox = await make_sandbox(client_secret="canary-cli-secret")
    port = unused_tcp_port_factory()
    config = write_config(tmp_path, str(sandbox.url), port)
    _, url = await start_broker(
        processes, port,
        *BROKER, "serve", "--config", str(config),
        "--cors-origin", "http://localhost:3000", "--cors-origin", "https://shop.example",
    )  # fmt: skip
    async with aiohttp.ClientSession() as http:
        assert await preflight(http, url, "http://localhost:3000") == 204
        assert await preflight(http, url, "https://shop.example") == 204
        assert await preflight(http, url, "https://evil.example") == 403


async def test_serve_sandbox_serves_the_demo_site_and_allows_its_origin(
    tmp_path: Path,
    unused_tcp_port_factory: Callable[[], int],
    processes: list[asyncio.subprocess.Process],
) -> None:
    port, sandbox_port, demo_port = (unused_tcp_port_factory() for _ in range(3))
    sdk = tmp_path / "index.mjs"
    sdk.write_text("export class AlternativeClient {}\n")
    process, url = await start_broker(
        processes, port,
        *BROKER, "serve", "--sandbox", "--port", str(port), "--sandbox-port", str(sandbox_port),
        "--demo-port", str(demo_port), "--cors-origin", "http://localhost:3000",
        "--sdk-url", str(sdk),
    )  # fmt: skip
    demo = f"http://127.0.0.1:{demo_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{demo}/") as response:
            page = await response.text()
        assert '"@getalternative/partner-sdk": "/sdk/partner-sdk.mjs"' in page
        assert "sandbox-demo-api-key" not in page
        async with http.get(f"{demo}/sdk/partner-sdk.mjs") as response:
            assert await response.text() == sdk.read_text()
        assert await preflight(http, url, demo) == 204
        assert await preflight(http, url, "http://localhost:3000") == 204
        assert await preflight(http, url, f"http://localhost:{demo_port}") == 403
        # The demo's backend mints through the broker; the page's origin may call it.
        async with http.post(
            f"{demo}/api/checkout-session",
            json={"customer_id": "cus_carol", "invoice_id": "inv_carol_1"},
        ) as response:
            assert response.status == 200
            token = (await response.json())["token"]
        async with http.get(
            f"{url}/checkout/invoice", headers={**auth(token), "Origin": demo}
        ) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == demo
            assert (await response.json())["id"] == "inv_carol_1"
    process.send_signal(signal.SIGTERM)
    output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0
    text = output.decode()
    banner = text[text.index("token-broker is running") :]
    assert re.findall(r"http://[\w.]+:\d+", banner)[0] == demo
    assert f"browsers allowed from: {demo}, http://localhost:3000" in banner
    assert "--cors-origin" in banner
    assert token not in text
    assert API_KEY not in text
    assert "cors_origin_refused" in text
