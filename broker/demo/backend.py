"""The demo partner's backend endpoint: ``POST /api/checkout-session``.

This is the code every partner writes once, and the only code the broker leaves them:
check that the invoice belongs to the user, then ask the broker for a session with the
API key, server side, and hand the page the session token. The API key never reaches
the page; the page never learns which credential the backend used.

Here the "signed-in user" is the customer the page picked (a demo has no sign-in); a
real backend takes the customer from its own session cookie, never from the body.
Every bad input gets a 4xx with the broker's error shape, ``{"code", "message"}``; the
messages are fixed sentences that never repeat the input or a credential.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import hdrs, web

from broker.demo.directory import Directory

SESSION_PATH = "/api/checkout-session"
BROKER_INIT_PATH = "/v1/checkout-auth/init"
# Two short IDs fit in far less; anything larger is not a session request.
MAX_BODY_BYTES = 4096


class DemoError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        return error_response(self.status, self.code, self.message)


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"code": code, "message": message},
        status=status,
        headers={hdrs.CACHE_CONTROL: "no-store"},
    )


class BrokerLink:
    """How the backend reaches the broker: its URL (known once it listens) and the key."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key
        self.broker_url: str | None = None

    def __repr__(self) -> str:  # the key stays out of reprs and tracebacks
        return f"BrokerLink(broker_url={self.broker_url!r})"

    def authorization(self) -> str:
        return f"Bearer {self._api_key}"


async def checkout_session(
    request: web.Request, directory: Directory, link: BrokerLink, http: aiohttp.ClientSession
) -> web.Response:
    customer_id, invoice_id = await _read_ids(request)
    customer = directory.customer(customer_id)
    if customer is None:
        raise DemoError(404, "unknown_customer", "There is no such customer.")
    # The check the broker cannot make for a partner: is this the user's invoice?
    if not customer.owns(invoice_id):
        raise DemoError(404, "unknown_invoice", "This customer has no such invoice.")
    if link.broker_url is None:
        raise DemoError(503, "broker_starting", "The broker is not listening yet; retry.")
    body = await _ask_broker(link, http, customer_id, invoice_id)
    token, expires_at = body.get("token"), body.get("expires_at")
    if not isinstance(token, str) or type(expires_at) is not int:  # bool is an int
        raise DemoError(502, "broker_garbled", "The broker's answer had no session token.")
    return web.json_response(
        {"token": token, "expires_at": expires_at},
        headers={hdrs.CACHE_CONTROL: "no-store"},
    )


async def _read_ids(request: web.Request) -> tuple[str, str]:
    # JSON only: a cross-site HTML form cannot send it without a CORS preflight, which
    # this site never answers, so another site cannot make a visitor's browser mint.
    if request.content_type != "application/json":
        raise DemoError(415, "unsupported_media_type", "Send a JSON body (application/json).")
    raw = await request.read()  # over MAX_BODY_BYTES: aiohttp raises 413
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON; absurd nesting
        raise DemoError(400, "bad_json", "The body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise DemoError(400, "bad_request", "The body must be a JSON object.")
    customer_id, invoice_id = body.get("customer_id"), body.get("invoice_id")
    if not isinstance(customer_id, str) or not isinstance(invoice_id, str):
        raise DemoError(400, "bad_request", "customer_id and invoice_id must be strings.")
    return customer_id, invoice_id


async def _ask_broker(
    link: BrokerLink, http: aiohttp.ClientSession, customer_id: str, invoice_id: str
) -> dict[str, Any]:
    url = f"{link.broker_url}{BROKER_INIT_PATH}"
    try:
        async with http.post(
            url,
            json={"customer_id": customer_id, "invoice_id": invoice_id},
            headers={hdrs.AUTHORIZATION: link.authorization()},
        ) as response:
            status = response.status
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DemoError(502, "broker_unreachable", "The broker did not answer.") from exc
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise DemoError(502, "broker_garbled", f"The broker answered {status} without JSON.")
    if status != 200:
        # The broker's codes are fixed snake_case words (never an input or a secret);
        # passing one on tells the developer why, e.g. rate_limited or unauthorized.
        code = body.get("code")
        code = code if isinstance(code, str) and code.isidentifier() else "unknown"
        raise DemoError(502, "broker_refused", f"The broker refused the session: {status} {code}.")
    return body
