"""The operators' surface, on its own listener with its own key: inspect and revoke.

Metadata only: a token never leaves the broker, not even to an operator. Every call,
allowed or refused, is audit-logged.
"""

from __future__ import annotations

import time

from aiohttp import web

from broker.auth.sessions import AuthFailure
from broker.credentials import fingerprint, unverified_claims, valid_id
from broker.errors import BadRequest
from broker.observability.logs import get_logger
from broker.web.handlers import NO_STORE, bearer_token
from broker.web.keys import admin_key_key, exchange_key, gateway_key

log = get_logger("broker.web.admin")


def _authorise(request: web.Request, action: str) -> str:
    request[exchange_key].auth = "admin_key"
    customer_id = request.match_info["customer_id"]
    remote = request.remote
    try:
        presented = bearer_token(request)
    except AuthFailure:
        presented = ""
    if not presented or not request.app[admin_key_key].check(presented):
        log.warning("admin_audit", action=action, customer_id=customer_id[:64],
                    remote=remote, outcome="unauthenticated")  # fmt: skip
        raise AuthFailure("unknown_admin_key")
    if not valid_id(customer_id):
        log.warning("admin_audit", action=action, remote=remote, outcome="bad_request")
        raise BadRequest("invalid customer id")
    request[exchange_key].customer_id = customer_id
    return customer_id


async def customer_tokens(request: web.Request) -> web.Response:
    customer_id = _authorise(request, "list_tokens")
    gateway = request.app[gateway_key]
    now = time.time()
    store = gateway.token_store
    tokens = [
        {
            "invoice_id": key.invoice_id,
            "expires_at": round(token.expires_at, 3),
            "age_s": _age(token.value, now),
            "fingerprint": fingerprint(token.value),
        }
        for key, token in store.items()
        if key.customer_id == customer_id
    ]
    log.info("admin_audit", action="list_tokens", customer_id=customer_id,
             remote=request.remote, outcome="ok", tokens=len(tokens))  # fmt: skip
    return web.json_response({"customer_id": customer_id, "tokens": tokens}, headers=NO_STORE)


def _age(token: str, now: float) -> float | None:
    """Seconds since the upstream issued *token* (its ``iat``), if it says."""
    issued = (unverified_claims(token) or {}).get("iat")
    if isinstance(issued, int | float) and not isinstance(issued, bool):
        return round(now - issued, 3)
    return None


async def revoke_customer(request: web.Request) -> web.Response:
    customer_id = _authorise(request, "revoke")
    gateway = request.app[gateway_key]
    before = time.time()
    evicted = await gateway.revoke_customer(customer_id, before)
    log.info("admin_audit", action="revoke", customer_id=customer_id, remote=request.remote,
             outcome="ok", tokens_evicted=evicted, revoked_before=before)  # fmt: skip
    body = {"customer_id": customer_id, "evicted": evicted, "sessions_revoked_before": before}
    return web.json_response(body, headers=NO_STORE)
