"""examples/: the partner backend works against a real broker, and the README's
"In the page" is exactly what examples/page.html holds."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from broker.demo.sdk import PINNED_SDK_INTEGRITY, PINNED_SDK_URL
from examples import partner_backend
from tests.conftest import BrokerClient
from tests.helpers import API_KEY, auth

REPO = Path(__file__).resolve().parent.parent
ExampleClient = TestClient[aiohttp.web.Request, aiohttp.web.Application]


def readme_page_block() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### In the page") :]
    match = re.search(r"```html\n(.*?)```", section, re.DOTALL)
    assert match, "no html block under 'In the page'"
    return match.group(1)


def test_the_readme_page_is_the_example_page_word_for_word() -> None:
    block = readme_page_block()
    assert block in (REPO / "examples" / "page.html").read_text()
    assert 'invoiceId: "inv_alice_1"' in block
    assert "onAccessTokenExpired: getSession" in block
    # It pins the same SDK, with the same integrity, as the demo site does.
    importmap = re.search(r'importmap">(.*?)</script>', block, re.DOTALL)
    assert importmap
    imports = json.loads(importmap.group(1))
    assert imports["imports"]["@getalternative/partner-sdk"] == PINNED_SDK_URL
    assert imports["integrity"] == {PINNED_SDK_URL: PINNED_SDK_INTEGRITY}


async def example(
    aiohttp_client: AiohttpClient, broker_url: str, api_key: str = API_KEY
) -> ExampleClient:
    config = partner_backend.Config(broker_url=broker_url, api_key=api_key, customer_id="cus_alice")
    return await aiohttp_client(partner_backend.create_app(config))


async def test_the_example_backend_gets_sessions_for_its_customers_invoices(
    aiohttp_client: AiohttpClient, broker: BrokerClient
) -> None:
    broker_url = str(broker.make_url("")).rstrip("/")
    client = await example(aiohttp_client, broker_url)
    response = await client.post("/api/checkout-session", json={"invoice_id": "inv_alice_2"})
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    token = (await response.json())["token"]
    invoice = await broker.get("/checkout/invoice", headers=auth(token))
    assert (await invoice.json())["id"] == "inv_alice_2"

    for body, status in [
        ({"invoice_id": "inv_bob_1"}, 404),  # not the signed-in customer's
        ({"invoice_id": 1}, 400),
        (["inv_alice_1"], 400),
    ]:
        response = await client.post("/api/checkout-session", json=body)
        assert response.status == status
        assert API_KEY not in await response.text()
    response = await client.post("/api/checkout-session", data=b"{nope")
    assert response.status == 400

    page = await (await client.get("/")).text()
    assert f'baseUrl: "{broker_url}"' in page
    assert API_KEY not in page


async def test_the_example_backend_says_502_when_the_broker_refuses(
    aiohttp_client: AiohttpClient, broker: BrokerClient
) -> None:
    broker_url = str(broker.make_url("")).rstrip("/")
    client = await example(aiohttp_client, broker_url, api_key="not-the-key-0123456789")
    response = await client.post("/api/checkout-session", json={"invoice_id": "inv_alice_1"})
    assert response.status == 502
    assert "not-the-key" not in await response.text()
    client = await example(aiohttp_client, "http://127.0.0.1:9")
    response = await client.post("/api/checkout-session", json={"invoice_id": "inv_alice_1"})
    assert response.status == 502


def test_the_example_needs_its_api_key_and_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if k != "BROKER_API_KEY"}
    result = subprocess.run(  # noqa: S603 - our own example
        [sys.executable, str(REPO / "examples" / "partner_backend.py")],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    assert "BROKER_API_KEY is required" in result.stderr
