"""The demo partner site: its backend endpoint in front of a real broker and sandbox,
the page it renders, where it loads the SDK from, and the refused-origin log line."""

from __future__ import annotations

import argparse
import ast
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from broker.config.model import CorsSettings
from broker.demo.backend import BrokerLink
from broker.demo.directory import Directory
from broker.demo.sdk import LOCAL_SDK_PATH, PINNED_SDK_URL, SdkSource, sdk_source
from broker.demo.site import DemoState, browser_url, create_demo_app
from tests.conftest import BrokerClient, LogCapture, MakeBroker
from tests.helpers import API_KEY, Sandbox, auth, make_settings

REPO = Path(__file__).resolve().parents[2]
DemoClient = TestClient[aiohttp.web.Request, aiohttp.web.Application]
MakeDemo = Callable[..., Awaitable[DemoClient]]
SESSION = "/api/checkout-session"


@pytest.fixture
def make_demo(aiohttp_client: AiohttpClient, broker: BrokerClient) -> MakeDemo:
    async def make(
        *, broker_url: str | None = "<broker>", api_key: str = API_KEY, sdk: SdkSource | None = None
    ) -> DemoClient:
        link = BrokerLink(api_key)
        link.broker_url = (
            str(broker.make_url("")).rstrip("/") if broker_url == "<broker>" else broker_url
        )
        state = DemoState(
            link=link,
            sdk=sdk or SdkSource.pinned(),
            directory=Directory.seeded(),
            sandbox_url="http://127.0.0.1:1",
            session_ttl=900,
            site_url="http://127.0.0.1:8082",
            allowed_origins=("http://127.0.0.1:8082",),
        )
        return await aiohttp_client(create_demo_app(state))

    return make


async def test_the_backend_gets_a_session_that_the_sdk_can_use(
    make_demo: MakeDemo, broker: BrokerClient
) -> None:
    demo = await make_demo()
    response = await demo.post(SESSION, json={"customer_id": "cus_bob", "invoice_id": "inv_bob_1"})
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert set(body) == {"token", "expires_at"}
    assert isinstance(body["expires_at"], int)
    invoice = await broker.get("/checkout/invoice", headers=auth(body["token"]))
    assert invoice.status == 200
    assert (await invoice.json())["id"] == "inv_bob_1"


@pytest.mark.parametrize(
    ("customer_id", "invoice_id", "code"),
    [
        ("cus_mallory", "inv_alice_1", "unknown_customer"),
        ("cus_alice", "inv_bob_1", "unknown_invoice"),  # exists, but is Bob's
        ("cus_alice", "inv_alice_9", "unknown_invoice"),  # the sandbox would make it up
        ("CUS_ALICE", "inv_alice_1", "unknown_customer"),
    ],
)
async def test_the_backend_refuses_what_the_customer_does_not_own(
    make_demo: MakeDemo, sandbox: Sandbox, customer_id: str, invoice_id: str, code: str
) -> None:
    demo = await make_demo()
    before = (await sandbox.stats())["tokens_issued"]
    response = await demo.post(SESSION, json={"customer_id": customer_id, "invoice_id": invoice_id})
    assert response.status == 404
    assert (await response.json())["code"] == code
    assert (await sandbox.stats())["tokens_issued"] == before  # nothing was minted


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"customer_id=cus_alice", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
        (b'{"customer_id": "cus_alice"}', {"Content-Type": "text/plain"}, 415),
        (b"{not json", {}, 400),
        (b"\xff\xfe{}", {}, 400),
        (b"[" * 3000 + b"]" * 3000, {}, 413),  # over the 4 KiB body limit
        (b"[" * 2000 + b"]" * 2000, {}, 400),  # deep enough to exhaust the JSON parser
        (b"[" * 2000, {}, 400),
        (b'["cus_alice", "inv_alice_1"]', {}, 400),
        (b'{"customer_id": "cus_alice"}', {}, 400),
        (b'{"customer_id": "cus_alice", "invoice_id": 7}', {}, 400),
        (b'{"customer_id": null, "invoice_id": "inv_alice_1"}', {}, 400),
        (b"", {}, 400),
        (b"x" * 5000, {}, 413),
    ],
)
async def test_every_bad_request_gets_a_clear_4xx_without_the_key(
    make_demo: MakeDemo, body: bytes, headers: dict[str, str], status: int
) -> None:
    demo = await make_demo()
    response = await demo.post(
        SESSION, data=body, headers={"Content-Type": "application/json", **headers}
    )
    assert response.status == status
    text = await response.text()
    shaped = json.loads(text)
    assert set(shaped) == {"code", "message"}
    assert API_KEY not in text


async def test_wrong_methods_and_paths_answer_json_4xx(make_demo: MakeDemo) -> None:
    demo = await make_demo()
    response = await demo.get(SESSION)
    assert response.status == 405
    assert (await response.json())["code"] == "http_error"
    response = await demo.post("/api/nothing", json={})
    assert response.status == 404
    assert (await response.json())["code"] == "http_error"


@pytest.mark.parametrize(
    ("broker_url", "api_key", "status", "code"),
    [
        (None, API_KEY, 503, "broker_starting"),
        ("http://127.0.0.1:9", API_KEY, 502, "broker_unreachable"),
        ("<broker>", "wrong-api-key-0123456789", 502, "broker_refused"),
    ],
)
async def test_broker_trouble_is_a_clean_5xx_naming_the_cause_never_the_key(
    make_demo: MakeDemo, broker_url: str | None, api_key: str, status: int, code: str
) -> None:
    demo = await make_demo(broker_url=broker_url, api_key=api_key)
    response = await demo.post(
        SESSION, json={"customer_id": "cus_alice", "invoice_id": "inv_alice_1"}
    )
    assert response.status == status
    text = await response.text()
    assert json.loads(text)["code"] == code
    assert api_key not in text
    if code == "broker_refused":
        assert "401 unauthorized" in json.loads(text)["message"]


def _script(html: str, selector: str) -> object:
    match = re.search(rf"<script {selector}>\s*(.*?)\s*</script>", html, re.DOTALL)
    assert match, selector
    return json.loads(match.group(1))


async def test_the_page_names_the_pinned_sdk_and_the_broker_never_the_key(
    make_demo: MakeDemo, broker: BrokerClient
) -> None:
    demo = await make_demo()
    response = await demo.get("/")
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    html = await response.text()
    assert API_KEY not in html
    imports = _script(html, 'type="importmap"')
    assert imports == {
        "imports": {"@getalternative/partner-sdk": PINNED_SDK_URL},
        "integrity": {PINNED_SDK_URL: SdkSource.pinned().integrity},
    }
    config = _script(html, 'type="application/json" id="demo-config"')
    assert isinstance(config, dict)
    assert config["brokerUrl"] == str(broker.make_url("")).rstrip("/")
    assert [c["id"] for c in config["customers"]] == ["cus_alice", "cus_bob", "cus_carol"]
    assert API_KEY not in json.dumps(config)
    script = await demo.get("/static/demo.js")
    assert script.status == 200
    assert "javascript" in script.headers["Content-Type"]
    assert (await demo.get("/static/../site.py")).status in (403, 404)


async def test_a_local_sdk_copy_is_served_by_the_site_without_integrity(
    make_demo: MakeDemo, tmp_path: Path
) -> None:
    copy = tmp_path / "partner-sdk" / "dist" / "index.mjs"
    copy.parent.mkdir(parents=True)
    copy.write_text("export class AlternativeClient {}\n")
    source = sdk_source(str(tmp_path / "partner-sdk"))  # the package folder works too
    assert source == SdkSource(url=LOCAL_SDK_PATH, local_file=copy)
    demo = await make_demo(sdk=source)
    html = await (await demo.get("/")).text()
    assert _script(html, 'type="importmap"') == {
        "imports": {"@getalternative/partner-sdk": LOCAL_SDK_PATH}
    }
    response = await demo.get(LOCAL_SDK_PATH)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/javascript")
    assert await response.text() == copy.read_text()


def test_sdk_urls_are_http_urls_or_existing_files(tmp_path: Path) -> None:
    assert sdk_source("https://unpkg.com/@getalternative/partner-sdk@0.1.7/dist/index.mjs") == (
        SdkSource(url="https://unpkg.com/@getalternative/partner-sdk@0.1.7/dist/index.mjs")
    )
    for bad in ("https://", "http://user:pw@cdn.example/sdk.mjs", "ftp://cdn.example/x.mjs",
                str(tmp_path / "missing.mjs"), str(tmp_path)):  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError, match=r"usable|neither"):
            sdk_source(bad)


def test_script_json_cannot_close_its_script_element() -> None:
    from broker.demo.site import _script_json  # noqa: PLC0415 - the private helper itself

    text = _script_json({"name": "</script><script>alert(1)</script>", "c": "<!--"})
    assert "</" not in text
    assert "<!--" not in text
    assert json.loads(text)["name"] == "</script><script>alert(1)</script>"


def test_browser_urls_replace_wildcard_binds_with_loopback() -> None:
    assert browser_url("http://0.0.0.0:8080") == "http://127.0.0.1:8080"
    assert browser_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert browser_url("http://[::]:8080") == "http://[::1]:8080"


async def test_a_refused_preflight_logs_the_origin(
    make_broker: MakeBroker, sandbox: Sandbox, logs: LogCapture
) -> None:
    allowed = "http://127.0.0.1:8082"
    client = await make_broker(
        make_settings(sandbox.url, cors=CorsSettings(allowed_origins=(allowed,)))
    )
    preflight = {"Access-Control-Request-Method": "GET"}
    response = await client.options(
        "/checkout/invoice", headers={"Origin": "http://localhost:8082", **preflight}
    )
    assert response.status == 403
    response = await client.options("/checkout/invoice", headers={"Origin": allowed, **preflight})
    assert response.status == 204
    (refused,) = logs.events("cors_origin_refused")
    assert refused["origin"] == "http://localhost:8082"
    assert refused["level"] == "warning"
    # A client chooses its Origin header: a long one is cut short in the log.
    await client.options(
        "/checkout/invoice", headers={"Origin": "http://" + "a" * 5000, **preflight}
    )
    assert len(logs.events("cors_origin_refused")[-1]["origin"]) == 200


def test_the_broker_never_imports_the_demo() -> None:
    """One-way imports: the demo builds on sandbox mode; only the CLI hands it over."""
    for path in (REPO / "broker").rglob("*.py"):
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith("broker/demo/") or relative == "broker/cli/main.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), relative)):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n == "broker.demo" or n.startswith("broker.demo.") for n in names), (
                relative
            )
