"""A partner's backend in front of token-broker: the one endpoint a page needs.

    token-broker serve --sandbox --cors-origin http://127.0.0.1:3000    # terminal 1
    BROKER_API_KEY=sandbox-demo-api-key python examples/partner_backend.py  # terminal 2
    # open http://127.0.0.1:3000/

It serves page.html and ``POST /api/checkout-session``: check that the invoice belongs
to the signed-in customer, ask the broker for a session with the API key (server side:
the key never reaches the browser), hand the page the session token. The page gives the
SDK that token and the broker's URL; when the session expires the SDK gets a 401 and
calls this endpoint again through ``onAccessTokenExpired``.

Environment: BROKER_URL (default http://127.0.0.1:8080), BROKER_API_KEY (required),
CUSTOMER_ID (the signed-in customer, default cus_alice), HOST and PORT (default
127.0.0.1:3000). Needs only aiohttp (``pip install aiohttp``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

PAGE = Path(__file__).with_name("page.html")
# The broker's URL as page.html names it (the sandbox's); replaced by BROKER_URL.
PAGE_BROKER_URL = "http://127.0.0.1:8080"

# Stands in for your database: which invoices each customer may pay. These are the
# sandbox's seeded ones; the broker mints for any pair your API key asks for, so this
# check is yours to make.
OWNED_INVOICES = {
    "cus_alice": {"inv_alice_1", "inv_alice_2"},
    "cus_bob": {"inv_bob_1"},
    "cus_carol": {"inv_carol_1"},
}


@dataclass(frozen=True)
class Config:
    broker_url: str
    api_key: str = field(repr=False)  # never in a repr, a log line or an answer
    customer_id: str

    @classmethod
    def from_environment(cls) -> Config:
        api_key = os.environ.get("BROKER_API_KEY", "")
        if not api_key:
            raise SystemExit(
                "BROKER_API_KEY is required (with `serve --sandbox`: sandbox-demo-api-key)"
            )
        return cls(
            broker_url=os.environ.get("BROKER_URL", PAGE_BROKER_URL).rstrip("/"),
            api_key=api_key,
            customer_id=os.environ.get("CUSTOMER_ID", "cus_alice"),
        )


config_key = web.AppKey("config", Config)
http_key = web.AppKey("http", aiohttp.ClientSession)


def problem(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


async def checkout_session(request: web.Request) -> web.Response:
    config = request.app[config_key]
    # In your app: the customer of the signed-in user (a session cookie), never the body.
    customer_id = config.customer_id
    try:
        body = await request.json()
    except ValueError:  # also what a body that is not UTF-8 raises
        return problem(400, "send a JSON body")
    invoice_id = body.get("invoice_id") if isinstance(body, dict) else None
    if not isinstance(invoice_id, str):
        return problem(400, "invoice_id must be a string")
    if invoice_id not in OWNED_INVOICES.get(customer_id, set()):
        return problem(404, "no such invoice for this customer")
    try:
        async with request.app[http_key].post(
            f"{config.broker_url}/v1/checkout-auth/init",
            json={"customer_id": customer_id, "invoice_id": invoice_id},
            headers={"Authorization": f"Bearer {config.api_key}"},
        ) as response:
            status, session = response.status, await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return problem(502, "the broker did not answer")
    if status != 200 or not isinstance(session, dict) or "token" not in session:
        return problem(502, f"the broker answered {status}")
    # Only what the page needs; no-store: a session token is a credential.
    return web.json_response(
        {"token": session["token"], "expires_at": session.get("expires_at")},
        headers={"Cache-Control": "no-store"},
    )


async def page(request: web.Request) -> web.Response:
    broker_url = request.app[config_key].broker_url
    html = PAGE.read_text(encoding="utf-8").replace(
        json.dumps(PAGE_BROKER_URL), json.dumps(broker_url)
    )
    return web.Response(text=html, content_type="text/html")


def create_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=4096)  # a session request is tiny
    app[config_key] = config

    async def http_session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            app[http_key] = http
            yield

    app.cleanup_ctx.append(http_session)
    app.router.add_get("/", page)
    app.router.add_post("/api/checkout-session", checkout_session)
    return app


def main() -> None:
    config = Config.from_environment()
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "3000"))
    print(f"partner page on http://{host}:{port}/ (broker {config.broker_url})", file=sys.stderr)
    web.run_app(create_app(config), host=host, port=port, print=None)


if __name__ == "__main__":
    main()
