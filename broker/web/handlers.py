"""Request handlers: parse the request, call collaborators, answer. Nothing else."""

from __future__ import annotations

import json
from typing import Final

from aiohttp import web

from broker.accounts import Account
from broker.auth.sessions import AuthFailure, Session
from broker.credentials import key_ids, token_key, valid_id
from broker.errors import BadGateway, BadRequest, NotFound
from broker.gateway import Gateway
from broker.headers import AUTHORIZATION, CACHE_CONTROL, PRAGMA
from broker.observability.logs import get_logger
from broker.observability.tracing import Tracing, maybe_span
from broker.proxy.answer import Answer, json_answer
from broker.proxy.relay import (
    read_body,
    relay_response,
    upstream_failure,
)
from broker.web.front_door import remote_address
from broker.web.keys import exchange_key, gateway_key

log = get_logger("broker.web.handlers")

NO_STORE = {CACHE_CONTROL: "no-store"}
# A session token: no cache may keep it, HTTP/1.0 ones included.
TOKEN_ANSWER = {CACHE_CONTROL: "no-store", PRAGMA: "no-cache"}
MAX_INIT_BODY = 4096
_BEARER_PREFIX: Final = "Bearer "


def bearer_token(request: web.Request) -> str:
    """The one ``Authorization: Bearer`` credential, or an AuthFailure naming why not."""
    values = request.headers.getall(AUTHORIZATION, ())
    if not values:
        raise AuthFailure("missing")
    if len(values) > 1:
        raise BadRequest("Duplicate Authorization header.")
    value = values[0]
    if not value.isascii():
        # aiohttp hands undecodable bytes over as surrogates: no credential has them.
        raise AuthFailure("malformed")
    if value.startswith(_BEARER_PREFIX):  # the SDK's exact form: one slice, no parse
        credential = value[len(_BEARER_PREFIX) :]
        # str.strip() returns the string itself when there is nothing to strip.
        if credential and " " not in credential and credential.strip() == credential:
            return credential
    scheme, _, credential = value.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or " " in credential:
        raise AuthFailure("malformed")
    return credential


async def health(_request: web.Request) -> Answer:
    return json_answer({"status": "ok"}, headers=NO_STORE)


async def readiness(request: web.Request) -> Answer:
    gateway = request.app[gateway_key]
    problems = await gateway.readiness_problems()
    gateway.metrics.ready.set(0 if problems else 1)
    if problems:
        body = {"status": "not_ready", "reasons": problems}
        return json_answer(body, status=503, headers=NO_STORE)
    notes = gateway.readiness_notes()  # e.g. Redis down: this replica serves alone
    ready = {"status": "ready", "notes": notes} if notes else {"status": "ready"}
    return json_answer(ready, headers=NO_STORE)


async def jwks(request: web.Request) -> Answer:
    keys = request.app[gateway_key].sessions.jwks()
    return json_answer(keys, headers={CACHE_CONTROL: "public, max-age=300"})


async def issue_session(request: web.Request) -> Answer:
    """``POST /v1/checkout-auth/init``: a partner backend (API key) or a browser (IdP JWT)."""
    gateway = request.app[gateway_key]
    exchange = request[exchange_key]
    is_idp = gateway.identity is not None
    exchange.auth = "jwt" if is_idp else "api_key"  # what a refused caller tried
    credential = bearer_token(request)
    # The API key names the partner account; an IdP caller belongs to the first.
    partner = gateway.api_keys.holder(credential)
    if partner is not None:
        exchange.auth = "api_key"
    else:
        # Browsers and key guessers are limited per IP; a partner backend issues
        # sessions for all its users from a few addresses, so its key is not.
        gateway.init_throttle.take(remote_address(request, gateway))
    customer_id, invoice_id = await _read_ids(request)
    # What was asked for (validated ids), on the line of a refusal too.
    exchange.customer_id, exchange.invoice_id = customer_id, invoice_id
    if partner is not None:
        auth = "api_key"
        if customer_id is None:
            raise BadRequest("invalid customer id")
    elif gateway.identity is not None:
        auth = "jwt"
        with maybe_span(gateway.tracing, "broker.identity.verify"):
            caller = await gateway.identity.verify(credential)
        exchange.caller = caller
        if customer_id is not None and customer_id != caller:
            raise NotFound("body customer_id is not the caller's")
        customer_id = exchange.customer_id = caller
        await gateway.first.ownership.require_owner(invoice_id, caller)
        partner = gateway.first.id
    else:
        raise AuthFailure("unknown_api_key")
    account = gateway.account(partner)
    key = token_key(customer_id, invoice_id)
    issued = gateway.sessions.issue(key, partner=account.id, client_id=account.api.active_client_id)
    account.metrics.sessions_issued.labels(partner=account.id, auth=auth).inc()
    body = {"token": issued.token, "expires_at": issued.expires_at}
    return json_answer(body, headers=TOKEN_ANSWER)


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object, refused when a key repeats: two customer_ids, one read by us and
    another by whatever reads the body next, are how request smuggling starts."""
    body = dict(pairs)
    if len(body) != len(pairs):
        raise _DuplicateKey
    return body


async def _read_ids(request: web.Request) -> tuple[str | None, str]:
    """(customer_id or None when absent, invoice_id) from the JSON body, validated."""
    limits = request.app[gateway_key].settings.limits
    limit = min(limits.max_body_bytes, MAX_INIT_BODY)
    raw = await read_body(request, limit, limits.body_timeout) or b""
    try:
        body = json.loads(raw, object_pairs_hook=_unique_keys)
    except _DuplicateKey:
        raise BadRequest("The request body repeats a key.") from None
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    customer_id, invoice_id = body.get("customer_id"), body.get("invoice_id")
    if customer_id is not None and not valid_id(customer_id):
        raise BadRequest("invalid customer id")
    if not valid_id(invoice_id):
        raise BadRequest("invalid invoice id")
    return (str(customer_id) if customer_id is not None else None), str(invoice_id)


async def proxy(gateway: Gateway, request: web.Request) -> web.StreamResponse:
    """Verify the session, swap in the checkout JWT, forward, stream the answer back.
    Routed bound to its gateway (``functools.partial``): no app lookup per request."""
    exchange = request[exchange_key]
    exchange.auth = "session"
    # Judged before the session is known: a bad path is refused whoever asks.
    first = gateway.first
    url = first.targets.upstream_url(request.method, request.raw_path)
    if gateway.tracing is None:
        session, account = await gateway.authenticate(bearer_token(request))
    else:
        session, account = await _traced_authenticate(gateway, gateway.tracing, request)
    if account is not first:  # another partner's upstream: its own URL (memoised too)
        url = account.targets.upstream_url(request.method, request.raw_path)
    exchange.customer_id, exchange.invoice_id = key_ids(session.key)
    gateway.session_throttle.take(session.digest)
    limits = gateway.settings.limits
    # Most SDK calls are GETs: no body to read, no coroutine to make for it.
    body = (
        await read_body(request, limits.max_body_bytes, limits.body_timeout)
        if request.body_exists
        else None
    )
    upstream = await account.forwarder.forward(request, exchange, session.key, url, body)
    try:
        status = upstream.status
        if not 200 <= status < 300:  # the usual 2xx costs this one chained comparison
            if not 200 <= status < 600:
                # A 1xx as the final answer (aiohttp returns a 101) or no HTTP status
                # at all: nothing a browser could be sent, nor the broker's to copy.
                raise BadGateway(f"upstream answered status {status}")
            if status < 400:
                raise BadGateway(f"upstream redirected ({status})")
            if status >= 500:  # its body is the upstream's internals: ours instead
                raise await upstream_failure(upstream, exchange, request.method)
        return await relay_response(request, upstream, exchange.request_id, gateway.cors)
    finally:
        upstream.release()


async def _traced_authenticate(
    gateway: Gateway, tracing: Tracing, request: web.Request
) -> tuple[Session, Account]:
    """``gateway.authenticate`` of the request's bearer token, in its span."""
    with tracing.span("broker.session.verify") as span:
        session, account = await gateway.authenticate(bearer_token(request))
        customer_id, invoice_id = key_ids(session.key)
        span.set("broker.customer_id", customer_id)
        span.set("broker.invoice_id", invoice_id)
        span.set("broker.partner", account.id)
    return session, account
