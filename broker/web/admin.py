"""The operators' surface, on its own listener with its own key: inspect and revoke
tokens, list partner accounts, promote a credential, reload the configuration.

Metadata only: a token never leaves the broker, not even to an operator. Every call,
allowed or refused, is audit-logged.
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from broker.auth.sessions import AuthFailure
from broker.credentials import customer_of, fingerprint, key_ids, unverified_claims, valid_id
from broker.errors import BadRequest, NotFound
from broker.observability.logs import get_logger
from broker.proxy.answer import Answer, json_answer
from broker.proxy.relay import read_body
from broker.web.handlers import NO_STORE, bearer_token
from broker.web.keys import exchange_key, gateway_key, reloader_key

log = get_logger("broker.web.admin")

MAX_ADMIN_BODY = 4096


def _authorise(request: web.Request, action: str) -> str:
    customer_id = request.match_info["customer_id"]
    _authenticate(request, action, customer_id=customer_id[:64])
    if not valid_id(customer_id):
        log.warning("admin_audit", action=action, remote=request.remote, outcome="bad_request")
        raise BadRequest("invalid customer id")
    request[exchange_key].customer_id = customer_id
    return customer_id


def _authenticate(request: web.Request, action: str, **audited: str) -> None:
    request[exchange_key].auth = "admin_key"
    try:
        presented = bearer_token(request)
    except AuthFailure:
        presented = ""
    if not presented or not request.app[gateway_key].admin_keys.check(presented):
        log.warning("admin_audit", action=action, remote=request.remote,
                    outcome="unauthenticated", **audited)  # fmt: skip
        raise AuthFailure("unknown_admin_key")


async def customer_tokens(request: web.Request) -> Answer:
    customer_id = _authorise(request, "list_tokens")
    gateway = request.app[gateway_key]
    now = time.time()
    tokens = [
        {
            "partner": account.id,
            "invoice_id": key_ids(key)[1],
            "expires_at": round(token.expires_at, 3),
            "age_s": _age(token.value, now),
            "fingerprint": fingerprint(token.value),
        }
        for account in gateway.accounts.values()
        for key, token in account.tokens.store.items()
        if customer_of(key) == customer_id
    ]
    log.info("admin_audit", action="list_tokens", customer_id=customer_id,
             remote=request.remote, outcome="ok", tokens=len(tokens))  # fmt: skip
    return json_answer({"customer_id": customer_id, "tokens": tokens}, headers=NO_STORE)


async def partners(request: web.Request) -> Answer:
    """Each partner account: its upstream, the credential in use, whether it has a
    partner token now, how many checkout JWTs it caches. No secret, no token."""
    _authenticate(request, "list_partners")
    gateway = request.app[gateway_key]
    listed = [
        {
            "id": account.id,
            "base_url": str(account.settings.base_url),
            "client_id": account.api.active_client_id,
            "on_secondary_credential": account.api.on_secondary,
            "partner_token": account.partner_token.has_valid_token(),
            "cached_tokens": len(account.tokens.store),
        }
        for account in gateway.accounts.values()
    ]
    log.info("admin_audit", action="list_partners", remote=request.remote, outcome="ok")
    return json_answer({"partners": listed}, headers=NO_STORE)


async def promote(request: web.Request) -> Answer:
    """Make one of a partner's configured credentials the primary one (rotation)."""
    partner = request.match_info["partner"]
    _authenticate(request, "promote", partner=partner[:64])
    body = await _json_body(request)
    client_id = body.get("client_id")
    if not isinstance(client_id, str) or not client_id:
        raise BadRequest("the body must name a client_id")
    gateway = request.app[gateway_key]
    if not gateway.promote(partner, client_id):
        log.warning("admin_audit", action="promote", partner=partner[:64],
                    remote=request.remote, outcome="not_found")  # fmt: skip
        raise NotFound("no such partner credential")
    log.info("admin_audit", action="promote", partner=partner, client_id=client_id,
             remote=request.remote, outcome="ok")  # fmt: skip
    body = {"partner": partner, "client_id": client_id, "promoted": True}
    return json_answer(body, headers=NO_STORE)


async def reload(request: web.Request) -> Answer:
    """Read the configuration again here and (with Redis) on every replica."""
    _authenticate(request, "reload")
    report = await request.app[reloader_key].reload_everywhere("admin")
    outcome = str(report["status"])
    log.info("admin_audit", action="reload", remote=request.remote, outcome=outcome)
    status = 200 if outcome == "reloaded" else 409
    return json_answer(report, status=status, headers=NO_STORE)


async def _json_body(request: web.Request) -> dict[str, object]:
    raw = await read_body(request, MAX_ADMIN_BODY, 10.0) or b"{}"
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def _age(token: str, now: float) -> float | None:
    """Seconds since the upstream issued *token* (its ``iat``), if it says."""
    issued = (unverified_claims(token) or {}).get("iat")
    if isinstance(issued, int | float) and not isinstance(issued, bool):
        return round(now - issued, 3)
    return None


async def revoke_customer(request: web.Request) -> Answer:
    customer_id = _authorise(request, "revoke")
    gateway = request.app[gateway_key]
    before = time.time()
    evicted = await gateway.revoke_customer(customer_id, before)
    log.info("admin_audit", action="revoke", customer_id=customer_id, remote=request.remote,
             outcome="ok", tokens_evicted=evicted, revoked_before=before)  # fmt: skip
    body = {"customer_id": customer_id, "evicted": evicted, "sessions_revoked_before": before}
    return json_answer(body, headers=NO_STORE)
