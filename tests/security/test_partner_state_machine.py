"""A Hypothesis state machine over two partner accounts in one broker.

Two sandboxes, each the upstream of one partner (its own OAuth client, its own
checkout-JWT signing secret, its own invoices in its own currency), and one broker in
front of both. The same customer and invoice ids live under both partners, owned alike
or not: such collisions are what a cache, a mint or a route keyed without the partner
would mix up. Rules issue sessions with either partner's API key (and with stale
ones) or through the IdP (the first configured partner's), forward calls with them,
move invoices, let sessions and checkout JWTs expire, revoke customers (in every
partner) and reload the configuration: a partner removed, added back (first or
last), its API key rotated, its account rebuilt (a new rate budget: the new account
takes over the old one's checkout JWTs), the order changed; also while calls are in
flight.

Invariants, checked after every step against what really reached each sandbox:

- every checkout request a sandbox receives was sent with a session of that sandbox's
  partner and carries a checkout JWT that sandbox signed, for that partner's client,
  for the (customer, invoice) of the session presented; every mint a sandbox receives
  is for a pair some session of its partner was issued for; the only other calls are
  OAuth and the ownership lookups of browser sessions, at the first partner's;
- each sandbox has answered no request with 401: the broker never presented a
  foreign, expired or stale checkout JWT (which it would otherwise recover from
  silently, re-minting and retrying);
- every answer the broker relayed came through the session's own partner's upstream,
  and an invoice answer is the session's invoice in that partner's currency;
- a session of a partner that is not configured is 401, as are revoked and expired
  ones; an API key is accepted exactly while it is its partner's current key;
- the broker runs exactly the configured accounts, the first one first, and counts the
  sessions each partner issued, per partner.

The servers run on a loop in a background thread (``live.LiveLoop``), shared by the
examples; each example reloads the starting configuration, resets both sandboxes and
names its own invoices.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import json
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
import jwt
import pytest
from aiohttp import web
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from yarl import URL

from broker.config.model import (
    TRANSPORTS,
    AdminSettings,
    PartnerSettings,
    ServerSettings,
    Settings,
)
from broker.gateway import Gateway
from broker.sandbox import SandboxSettings, create_sandbox_app
from broker.web.app import create_app, runner_options
from broker.web.keys import gateway_key
from broker.web.runner import GatewayRunner
from tests.helpers import API_KEY, Sandbox
from tests.security.conftest import (
    ADMIN_KEY,
    NOT_FOUND_BODY,
    hardened_settings,
    header_values,
    hs256_mode,
    idp_claims,
    sample,
    sign_idp,
    unverified,
)
from tests.security.live import LiveLoop, LiveStack, admin_app_factory

USERS = {"user_a": "cus_p_a", "user_b": "cus_p_b", "user_c": "cus_p_c"}
CUSTOMERS = tuple(sorted(USERS.values()))
INVOICES = ("inv_p_1", "inv_p_2", "inv_p_3", "inv_p_4")
INVOICE_PATHS = ("/checkout/invoice", "/checkout/v1/invoice")
OTHER_PATHS = ("/checkout/payment-methods", "/checkout/v1/preferences/theme")
SESSION_TTL = 1  # seconds; with leeway 0, a session lives (0, 1] s: expiry happens
# Checkout JWTs are forwarded for 4/5 of this (the refresh margin is capped at a fifth
# of a token's lifetime), so longer examples see them expire and get re-minted.
CHECKOUT_TTL = 2.0
SLACK = 0.02  # seconds of clock slack around a session's exp


@dataclass(frozen=True)
class Upstream:
    """One partner of the broker and the sandbox that is its upstream."""

    partner: str
    api_key: str
    currency: str
    sandbox: SandboxSettings
    # Invoice -> owner at the start of each example.
    owners: dict[str, str]


def _upstream(partner: str, currency: str, owners: dict[str, str]) -> Upstream:
    sandbox = SandboxSettings(
        client_id=f"client-{partner}",
        client_secret=f"client-{partner}-secret-{secrets.token_hex(8)}",
        partner_id=f"partner_{partner}",
        token_ttl=CHECKOUT_TTL,
        synthesize_unknown=False,
        signing_secret=secrets.token_bytes(32),  # fresh per run, and per partner
    )
    return Upstream(partner, f"{partner}-api-key-0123456789", currency, sandbox, owners)


# inv_p_1: the same pair under both partners; inv_p_2: the same invoice id, another
# owner; inv_p_3 and inv_p_4: an invoice only one partner has.
ALPHA_OWNERS = {"inv_p_1": "cus_p_a", "inv_p_2": "cus_p_b", "inv_p_3": "cus_p_c"}
BETA_OWNERS = {"inv_p_1": "cus_p_a", "inv_p_2": "cus_p_c", "inv_p_4": "cus_p_b"}
UPSTREAMS = {
    u.partner: u
    for u in (_upstream("alpha", "eur", ALPHA_OWNERS), _upstream("beta", "gbp", BETA_OWNERS))
}
PARTNERS = tuple(UPSTREAMS)
RELOADS = ("toggle", "rotate", "rebuild", "reorder")
RATE = 1000.0  # a partner's rate budget; a reload that changes it rebuilds the account


@dataclass
class LiveSession:
    token: str = dataclasses.field(repr=False)
    partner: str
    customer: str
    invoice: str
    expires_at: float
    auth: str
    revoked: bool = False


@dataclass(frozen=True)
class Plan:
    """A reload: the partners configured after it, in order, their API keys and rate
    budgets, what ``ReloadOutcome.partners`` must say, and whose sessions it may flip to
    or from 401."""

    configured: tuple[str, ...]
    keys: dict[str, str]
    rates: dict[str, float]
    outcome: dict[str, str]
    flipping: str | None
    what: str


def _settings(urls: dict[str, URL], *, transport: str) -> Settings:
    settings = hardened_settings(
        urls[PARTNERS[0]],
        jwt_auth=hs256_mode(customer_claim="customer", ownership_cache_ttl=0.0),
        admin=AdminSettings(enabled=True, api_key=ADMIN_KEY),
        server=ServerSettings(shutdown_timeout=1.0),
        session_ttl=SESSION_TTL,
    )
    partners = tuple(
        PartnerSettings(
            id=u.partner,
            base_url=urls[u.partner],
            client_id=u.sandbox.client_id,
            client_secret=u.sandbox.client_secret,
            rate_limit_per_second=RATE,
            api_keys=(u.api_key,),
        )
        for u in UPSTREAMS.values()
    )
    return dataclasses.replace(
        settings,
        sessions=dataclasses.replace(settings.sessions, leeway=0),
        upstream=dataclasses.replace(settings.upstream, transport=transport),
        declared_partners=partners,
    )


class PartnerStack(LiveStack):
    """Both sandboxes, the broker in front of them and its admin listener."""

    def __init__(self, live: LiveLoop) -> None:
        super().__init__(live)
        self.sandboxes: dict[str, Sandbox] = {}
        self._gateway: Gateway | None = None
        self._settings: Settings | None = None

    @property
    def gateway(self) -> Gateway:
        assert self._gateway is not None
        return self._gateway

    @property
    def partner_settings(self) -> dict[str, PartnerSettings]:
        assert self._settings is not None
        return {p.id: p for p in self._settings.partners}

    def settings_for(
        self, configured: tuple[str, ...], keys: dict[str, str], rates: dict[str, float]
    ) -> Settings:
        """The running configuration with these partners, in this order, these keys and
        rate budgets."""
        assert self._settings is not None
        templates = self.partner_settings
        partners = tuple(
            dataclasses.replace(
                templates[pid], api_keys=(keys[pid],), rate_limit_per_second=rates[pid]
            )
            for pid in configured
        )
        return dataclasses.replace(self._settings, declared_partners=partners)

    async def start_partners(self, make_settings: Callable[[dict[str, URL]], Settings]) -> None:
        self.http = aiohttp.ClientSession()
        urls = {}
        for pid, upstream in UPSTREAMS.items():
            port = await self._serve(web.AppRunner(create_sandbox_app(upstream.sandbox)))
            urls[pid] = URL(f"http://127.0.0.1:{port}")
            self.sandboxes[pid] = Sandbox(url=urls[pid], http=self.http)
        self.sandbox = self.sandboxes[PARTNERS[0]]
        settings = make_settings(urls)
        app = create_app(settings, registry=self.registry)
        self.broker_port = await self._serve(GatewayRunner(app, **runner_options(settings)))
        factory = admin_app_factory()
        assert factory is not None, "create_admin_app is missing"
        admin_port = await self._serve(GatewayRunner(factory(app)))
        self.admin_url = URL(f"http://127.0.0.1:{admin_port}")
        self._gateway = app[gateway_key]
        self._settings = self._gateway.settings  # as running


_examples = itertools.count()
# (partner, customer, invoice) of every session issued in any example: a checkout JWT
# still in use is renewed in the background, which may land in a later example's log.
_every_pair_issued: set[tuple[str, str, str]] = set()


class PartnerMachine(RuleBasedStateMachine):
    stack: ClassVar[PartnerStack]

    def __init__(self) -> None:
        super().__init__()
        self.live = self.stack.live
        self.configured: tuple[str, ...] = PARTNERS
        self.keys = {pid: u.api_key for pid, u in UPSTREAMS.items()}
        self.rates = dict.fromkeys(PARTNERS, RATE)
        # The single-account [sessions] key selects no declared partner.
        self.stale_keys: list[str] = [API_KEY]
        self.live.run(self.stack.gateway.reload(self._settings()))
        for sandbox in self.stack.sandboxes.values():
            self.live.run(sandbox.reset())
        # Invoices outlive a sandbox reset: each example names its own.
        self.tag = next(_examples)
        self.owners: dict[str, dict[str, str]] = {pid: {} for pid in PARTNERS}
        for pid, upstream in UPSTREAMS.items():
            for invoice, customer in upstream.owners.items():
                self._move(pid, self._id(invoice), customer)
        self.sessions: list[LiveSession] = []
        self.request_keys: dict[str, tuple[str, str, str]] = {}
        self.relayed: dict[str, str] = {}  # request id -> partner, for each 200 relayed
        self.reached: dict[str, set[str]] = {pid: set() for pid in PARTNERS}
        self.looked_up: dict[str, set[str]] = {pid: set() for pid in PARTNERS}
        self.seen = dict.fromkeys(PARTNERS, 0)
        self.mints: Counter[tuple[str, str, str]] = Counter()
        self.refusal_body: bytes | None = None
        self.pauses = 0
        self.revocations = 0
        registry = self.stack.registry
        self.issued_before = {
            (pid, auth): sample(
                registry, "broker_sessions_issued_total", {"partner": pid, "auth": auth}
            )
            for pid in PARTNERS
            for auth in ("jwt", "api_key")
        }

    # -- rules: sessions ------------------------------------------------------------

    @rule(
        partner=st.sampled_from(PARTNERS),
        customer=st.sampled_from(CUSTOMERS),
        invoice=st.sampled_from(INVOICES),
    )
    def partner_backend_asks_for_a_session(self, partner: str, customer: str, invoice: str) -> None:
        """Any pair: a partner backend is trusted with its customers' ids."""
        event(self.live.run(self._partner_init(self.keys[partner], customer, self._id(invoice))))

    @rule(data=st.data(), partner=st.sampled_from(PARTNERS))
    def partner_backend_asks_for_an_owner(self, data: st.DataObject, partner: str) -> None:
        invoice = data.draw(st.sampled_from(sorted(self.owners[partner])))
        customer = self.owners[partner][invoice]
        event(self.live.run(self._partner_init(self.keys[partner], customer, invoice)))

    @rule(
        index=st.integers(0, 99),
        customer=st.sampled_from(CUSTOMERS),
        invoice=st.sampled_from(INVOICES),
    )
    def someone_presents_a_stale_key(self, index: int, customer: str, invoice: str) -> None:
        """A key rotated away, or the current key of a partner not configured now."""
        stale = self.stale_keys + [self.keys[p] for p in PARTNERS if p not in self.configured]
        key = stale[index % len(stale)]
        event(self.live.run(self._partner_init(key, customer, self._id(invoice))))

    @rule(
        user=st.sampled_from(sorted(USERS)),
        invoice=st.sampled_from(INVOICES),
        named=st.sampled_from([None, "own", *CUSTOMERS]),
    )
    def browser_asks_for_a_session(self, user: str, invoice: str, named: str | None) -> None:
        event(self.live.run(self._browser_init(user, self._id(invoice), named)))

    @rule(data=st.data())
    def owner_asks_in_the_browser(self, data: st.DataObject) -> None:
        """The first partner's invoices are the ones browser sessions can be for."""
        owners = self.owners[self.configured[0]]
        invoice = data.draw(st.sampled_from(sorted(owners)))
        user = next(u for u, c in USERS.items() if c == owners[invoice])
        event(self.live.run(self._browser_init(user, invoice, "own")))

    @rule(
        partner=st.sampled_from(PARTNERS),
        invoice=st.sampled_from(INVOICES),
        customer=st.sampled_from(CUSTOMERS),
    )
    def invoice_changes_hands(self, partner: str, invoice: str, customer: str) -> None:
        self._move(partner, self._id(invoice), customer)

    # -- rules: calls -----------------------------------------------------------------

    @precondition(lambda self: bool(self.sessions))
    @rule(index=st.integers(0, 99), path=st.sampled_from(INVOICE_PATHS + OTHER_PATHS))
    def browser_calls_checkout(self, index: int, path: str) -> None:
        session = self.sessions[index % len(self.sessions)]
        event(self.live.run(self._proxy(session, path)))

    @precondition(lambda self: any(s.partner not in self.configured for s in self.sessions))
    @rule(index=st.integers(0, 99), path=st.sampled_from(INVOICE_PATHS + OTHER_PATHS))
    def a_session_of_a_partner_taken_out_calls(self, index: int, path: str) -> None:
        orphans = [s for s in self.sessions if s.partner not in self.configured]
        event(self.live.run(self._proxy(orphans[index % len(orphans)], path)))

    @precondition(lambda self: bool(self.sessions))
    @rule(
        indices=st.lists(st.integers(0, 99), min_size=2, max_size=8),
        inits=st.lists(
            st.tuples(
                st.sampled_from(PARTNERS),
                st.sampled_from(CUSTOMERS),
                st.sampled_from(INVOICES),
            ),
            max_size=3,
        ),
    )
    def many_things_at_once(self, indices: list[int], inits: list[tuple[str, str, str]]) -> None:
        """Calls of both partners' sessions and new sessions for colliding pairs."""
        calls: list[Coroutine[Any, Any, str]] = [
            self._proxy(self.sessions[i % len(self.sessions)], INVOICE_PATHS[i % 2])
            for i in indices
        ]
        calls += [self._partner_init(self.keys[p], c, self._id(i)) for p, c, i in inits]
        for outcome in self.live.run(_all(calls)):
            event(outcome)

    @precondition(lambda self: self.pauses < 1 and bool(self.sessions))
    @rule()
    def time_passes(self) -> None:
        """Until the next live session has certainly expired (under a second)."""
        self.pauses += 1
        event("time passes")
        now = time.time()
        pending = [s.expires_at for s in self.sessions if s.expires_at > now]
        if pending:
            time.sleep(min(pending) - now + 2 * SLACK)
        expired = [s for s in self.sessions if s.expires_at + SLACK < time.time()][-3:]
        for session in expired:
            event(self.live.run(self._proxy(session, INVOICE_PATHS[0])))

    # -- rules: the operator ------------------------------------------------------------

    @precondition(lambda self: self.revocations < 2)
    @rule(customer=st.sampled_from(CUSTOMERS))
    def operator_revokes_a_customer(self, customer: str) -> None:
        self.revocations += 1
        self.live.run(self._revoke(customer))

    @rule(kind=st.sampled_from(RELOADS), partner=st.sampled_from(PARTNERS), front=st.booleans())
    def operator_reloads(self, kind: str, partner: str, front: bool) -> None:
        plan = self._plan(kind, partner, front)
        event(f"reload: {plan.what}")
        self.live.run(self._reload(plan))
        # The newest sessions of a partner just taken out: refused from now on.
        orphans = [s for s in self.sessions if s.partner not in self.configured][-2:]
        for session in orphans:
            event(self.live.run(self._proxy(session, INVOICE_PATHS[0])))

    @precondition(lambda self: bool(self.sessions))
    @rule(
        kind=st.sampled_from(RELOADS),
        partner=st.sampled_from(PARTNERS),
        front=st.booleans(),
        indices=st.lists(st.integers(0, 99), min_size=2, max_size=8),
    )
    def operator_reloads_while_calls_are_in_flight(
        self, kind: str, partner: str, front: bool, indices: list[int]
    ) -> None:
        plan = self._plan(kind, partner, front)
        event(f"reload in flight: {plan.what}")
        calls: list[Coroutine[Any, Any, str]] = [
            self._proxy(self.sessions[i % len(self.sessions)], INVOICE_PATHS[i % 2], plan)
            for i in indices
        ]
        half = len(calls) // 2

        async def swap() -> str:
            await asyncio.sleep(0)  # let the first half get going
            await self._reload(plan)
            return "reload: done"

        for outcome in self.live.run(_all([*calls[:half], swap(), *calls[half:]])):
            event(outcome)

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def each_upstream_saw_only_its_own_partners_sessions(self) -> None:
        async def observed(pid: str) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
            sandbox = self.stack.sandboxes[pid]
            return pid, await sandbox.requests(), await sandbox.stats()

        async def both() -> list[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
            return list(await asyncio.gather(*(observed(pid) for pid in PARTNERS)))

        for pid, recorded, stats in self.live.run(both()):
            new, self.seen[pid] = recorded[self.seen[pid] :], len(recorded)
            for entry in new:
                self._judge(pid, entry)
            assert stats["unauthorized_served"] == 0, (pid, stats)
        for request_id, pid in self.relayed.items():
            assert request_id in self.reached[pid], (pid, request_id, "not seen upstream")

    @invariant()
    def the_broker_runs_the_configured_accounts(self) -> None:
        async def accounts() -> tuple[list[str], str]:
            gateway = self.stack.gateway
            return list(gateway.accounts), gateway.first.id

        ids, first = self.live.run(accounts())
        assert sorted(ids) == sorted(self.configured), (ids, self.configured)
        assert first == self.configured[0]

    @invariant()
    def every_issued_session_is_counted_for_its_partner(self) -> None:
        registry = self.stack.registry
        for (pid, auth), before in self.issued_before.items():
            ours = sum(1 for s in self.sessions if (s.partner, s.auth) == (pid, auth))
            labels = {"partner": pid, "auth": auth}
            issued = sample(registry, "broker_sessions_issued_total", labels)
            assert issued - before == ours, labels

    # -- helpers --------------------------------------------------------------------

    def _id(self, invoice: str) -> str:
        return f"{invoice}_{self.tag}"

    def _settings(self) -> Settings:
        return self.stack.settings_for(self.configured, self.keys, self.rates)

    def _move(self, partner: str, invoice: str, customer: str) -> None:
        body = {"id": invoice, "customer_id": customer, "currency": UPSTREAMS[partner].currency}
        self.live.run(self.stack.sandboxes[partner].post("/_sandbox/invoices", body))
        self.owners[partner][invoice] = customer

    def _judge(self, pid: str, entry: dict[str, Any]) -> None:
        """One request that reached *pid*'s sandbox, against the sessions it could be for."""
        path = entry["raw_path"]
        upstream = UPSTREAMS[pid].sandbox
        if path.startswith("/checkout"):
            (request_id,) = header_values(entry, "X-Request-Id")
            assert request_id in self.request_keys, entry
            partner, customer, invoice = self.request_keys[request_id]
            assert partner == pid, f"a session of {partner} reached {pid}'s upstream: {entry}"
            (bearer,) = header_values(entry, "Authorization")
            token = bearer.removeprefix("Bearer ")
            try:
                claims = jwt.decode(
                    token,
                    upstream.signing_secret,
                    algorithms=["HS256"],
                    options={"verify_exp": False},
                )
            except jwt.InvalidTokenError:
                raise AssertionError(
                    f"{pid}'s upstream got a checkout JWT it did not sign: {unverified(token)}"
                ) from None
            got = (claims["partner_id"], claims["client_id"], claims["customer_id"],
                   claims["invoice_id"])  # fmt: skip
            assert got == (upstream.partner_id, upstream.client_id, customer, invoice), (
                got,
                entry,
            )
            self.reached[pid].add(request_id)
        elif path.endswith("checkout-auth/init"):
            minted = json.loads(entry["body"])
            pair = (pid, minted["customer_id"], minted["invoice_id"])
            assert pair in _every_pair_issued, (pair, "minted with no such session")
            self.mints[pair] += 1
            if self.mints[pair] == 2:
                event("upstream: a checkout JWT renewed")
        elif path.startswith("/invoices/"):
            # Ownership lookups: browser sessions, which belong to the first partner.
            assert path.removeprefix("/invoices/") in self.looked_up[pid], (pid, entry)
        else:
            assert path == "/oauth/token", (pid, entry)

    def _holder(self, key: str) -> str | None:
        """The partner *key* selects now, if any."""
        return next((p for p in self.configured if self.keys[p] == key), None)

    async def _partner_init(self, key: str, customer: str, invoice: str) -> str:
        holder = self._holder(key)
        async with self.stack.client.post(
            self.stack.broker_url / "v1/checkout-auth/init",
            json={"customer_id": customer, "invoice_id": invoice},
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            status, raw = response.status, await response.read()
        if holder is None:
            assert status == 401, (key, customer, invoice, raw)
            return "init: stale or unconfigured key refused"
        assert status == 200, (holder, customer, invoice, raw)
        self._record(json.loads(raw), holder, customer, invoice, "api_key")
        owner = self.owners[holder].get(invoice) == customer
        return f"init: partner backend session ({'owner' if owner else 'not the owner'})"

    async def _browser_init(self, user: str, invoice: str, named: str | None) -> str:
        own = USERS[user]
        customer = own if named == "own" else named
        first = self.configured[0]
        self.looked_up[first].add(invoice)
        body = {"invoice_id": invoice} | ({} if customer is None else {"customer_id": customer})
        idp_token = sign_idp("hs256", idp_claims(user, customer=own))
        async with self.stack.client.post(
            self.stack.broker_url / "v1/checkout-auth/init",
            json=body,
            headers={"Authorization": f"Bearer {idp_token}"},
        ) as response:
            status, raw = response.status, await response.read()
        if self.owners[first].get(invoice) == own and customer in (None, own):
            assert status == 200, (first, user, invoice, customer, raw)
            self._record(json.loads(raw), first, own, invoice, "jwt")
            return "init: owner got a browser session"
        assert status == 404, (first, user, invoice, customer, self.owners, raw)
        assert json.loads(raw) == NOT_FOUND_BODY
        self.refusal_body = self.refusal_body or raw
        assert raw == self.refusal_body
        return "init: uniform 404"

    def _record(
        self, body: dict[str, Any], partner: str, customer: str, invoice: str, auth: str
    ) -> None:
        claims = unverified(body["token"])
        assert (claims["customer_id"], claims["invoice_id"], claims["sub"]) == (
            customer,
            invoice,
            customer,
        )
        assert claims.get("partner") == partner, (partner, claims)
        assert claims["client_id"] == UPSTREAMS[partner].sandbox.client_id, claims
        assert body["expires_at"] == claims["exp"]
        session = LiveSession(body["token"], partner, customer, invoice, claims["exp"], auth)
        self.sessions.append(session)
        _every_pair_issued.add((partner, customer, invoice))

    async def _proxy(self, session: LiveSession, path: str, reload: Plan | None = None) -> str:
        request_id = uuid.uuid4().hex
        self.request_keys[request_id] = (session.partner, session.customer, session.invoice)
        sent = time.time()
        async with self.stack.client.get(
            self.stack.broker_url.with_path(path),
            headers={"Authorization": f"Bearer {session.token}", "X-Request-Id": request_id},
        ) as response:
            status, raw = response.status, await response.read()
        answered = time.time()
        context = (session, path, status, raw[:200], self.configured)
        assert status < 500, context
        if status == 200:
            self.relayed[request_id] = session.partner
        flipping = reload is not None and reload.flipping == session.partner
        refused = self._refused(session, status, (sent, answered), flipping, context)
        if refused is not None:
            return refused
        owner = self.owners[session.partner].get(session.invoice) == session.customer
        if path not in INVOICE_PATHS:
            # Not about the invoice, so served even after it moved away, unless the
            # checkout JWT still has to be minted: the upstream refuses that mint.
            assert status == 200 if owner else status in {200, 404}, context
            return "proxy: live session served"
        if owner:
            assert status == 200, context
            invoice = json.loads(raw)
            got = (invoice["id"], invoice["customer_id"], invoice["currency"])
            want = (session.invoice, session.customer, UPSTREAMS[session.partner].currency)
            assert got == want, (got, want, context)
            return f"proxy: owner reached the invoice at {session.partner}"
        assert status == 404, context  # not the owner (any more): the upstream says so
        return "proxy: not the invoice's owner, 404"

    def _refused(
        self,
        session: LiveSession,
        status: int,
        times: tuple[float, float],
        flipping: bool,
        context: object,
    ) -> str | None:
        """The outcome of a call that must (or may) be refused; None for the rest.
        *flipping*: a reload in flight takes the session's partner out or puts it back."""
        sent, answered = times
        if flipping and status == 401:
            return "proxy: refused as its partner was taken out or not yet back"
        if session.partner not in self.configured and not flipping:
            assert status == 401, context
            return "proxy: session of an unconfigured partner refused"
        if session.revoked:
            assert status == 401, context
            return "proxy: revoked session refused"
        if sent > session.expires_at + SLACK:
            assert status == 401, context
            return "proxy: expired session refused"
        if answered >= session.expires_at - SLACK:
            assert status in {200, 401, 404}, context  # expiring while in flight
            return "proxy: session expiring in flight"
        return None

    async def _revoke(self, customer: str) -> None:
        assert self.stack.admin_url is not None
        async with self.stack.client.delete(
            self.stack.admin_url / f"admin/v1/customers/{customer}/tokens",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        ) as response:
            assert response.status == 200, await response.text()
            body = await response.json()
        assert body["customer_id"] == customer
        assert isinstance(body["evicted"], int)
        # In every partner: a customer id names no partner.
        for session in self.sessions:
            if session.customer == customer:
                session.revoked = True

    def _plan(self, kind: str, partner: str, front: bool) -> Plan:
        """What *kind* of reload does from here; "toggle" when it cannot (a partner not
        configured cannot be rotated or rebuilt, one alone cannot be reordered)."""
        configured, keys, rates = self.configured, dict(self.keys), dict(self.rates)
        if kind == "rotate" and partner in configured:
            keys[partner] = f"{partner}-rotated-{uuid.uuid4().hex}"
            outcome = {p: "updated" if p == partner else "kept" for p in configured}
            return Plan(configured, keys, rates, outcome, None, f"{partner}'s API key rotated")
        if kind == "rebuild" and partner in configured:
            # A new account for the same credentials: it takes over the old one's tokens.
            rates[partner] = RATE - 1 if rates[partner] == RATE else RATE
            outcome = {p: "replaced" if p == partner else "kept" for p in configured}
            return Plan(configured, keys, rates, outcome, None, f"{partner} rebuilt")
        if kind == "reorder" and len(configured) == 2:
            swapped = configured[::-1]
            kept = dict.fromkeys(configured, "kept")
            return Plan(swapped, keys, rates, kept, None, "order swapped")
        if len(configured) == 2:
            remaining = tuple(p for p in configured if p != partner)
            outcome = {remaining[0]: "kept", partner: "removed"}
            return Plan(remaining, keys, rates, outcome, partner, f"{partner} removed")
        (alone,) = configured
        (back,) = (p for p in PARTNERS if p != alone)
        order = (back, alone) if front else (alone, back)
        outcome = {alone: "kept", back: "added"}
        where = "first" if front else "last"
        return Plan(order, keys, rates, outcome, back, f"{back} added back, {where}")

    async def _reload(self, plan: Plan) -> None:
        settings = self.stack.settings_for(plan.configured, plan.keys, plan.rates)
        outcome = await self.stack.gateway.reload(settings)
        assert outcome.partners == plan.outcome, (outcome, plan)
        assert not outcome.signing_key_rotated
        for pid, key in self.keys.items():
            if plan.keys[pid] != key:
                self.stale_keys.append(key)
        self.configured, self.keys, self.rates = plan.configured, plan.keys, plan.rates


async def _all(calls: list[Coroutine[Any, Any, str]]) -> list[str]:
    # Let every call finish before failing, so none leaks into the next example.
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return [outcome for outcome in outcomes if isinstance(outcome, str)]


@pytest.mark.forwarding
@pytest.mark.parametrize(
    "examples",
    [
        6,
        # The same machine on more than three times the examples (about 10 s); the six
        # above run the same rules and invariants in the inner loop, on fewer sequences.
        pytest.param(20, marks=pytest.mark.slow),
    ],
)
def test_each_partners_sessions_reach_only_its_own_upstream(transport: str, examples: int) -> None:
    """*examples* examples of up to 20 steps in all, shared between the upstream
    transports."""
    live = LiveLoop()
    stack = PartnerStack(live)
    live.run(stack.start_partners(functools.partial(_settings, transport=transport)))
    PartnerMachine.stack = stack
    try:
        run_state_machine_as_test(
            PartnerMachine,
            settings=settings(
                max_examples=examples // len(TRANSPORTS),
                stateful_step_count=20,
                deadline=None,
                database=None,
                # No shrinking: replays against live servers take minutes, and a
                # failure already prints its whole (at most 20-step) sequence.
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        live.run(stack.stop())
        live.close()
