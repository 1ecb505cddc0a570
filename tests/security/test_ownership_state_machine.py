"""A Hypothesis state machine over users, invoices, ownership, expiry and revocation.

Invariants, checked after every step against what really reached the sandbox:

- a session is issued only to the current owner of the invoice requested, and its
  claims name exactly that (customer, invoice); every other request is the uniform 404;
- every checkout request the upstream receives carries a checkout JWT whose (unverified)
  claims are the (customer, invoice) of the session the browser presented, and every
  mint is for a pair some session was issued for;
- revoked sessions are 401 from the next request on; expired ones are 401; live,
  unrevoked sessions of the invoice's owner reach their invoice.

The servers run on a loop in a background thread (``live.LiveLoop``), shared by the
examples; each example resets the sandbox and sets every invoice's owner afresh.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
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

from broker.config.model import TRANSPORTS, AdminSettings, ServerSettings, Settings
from broker.sandbox import SandboxSettings
from tests.helpers import API_KEY
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
from tests.security.live import LiveLoop, LiveStack

USERS = {"user_a": "cus_s_a", "user_b": "cus_s_b", "user_c": "cus_s_c"}
CUSTOMERS = tuple(sorted(USERS.values()))
INVOICES = ("inv_s_1", "inv_s_2", "inv_s_3", "inv_s_4")
FIRST_OWNERS = {"inv_s_1": "cus_s_a", "inv_s_2": "cus_s_b", "inv_s_3": "cus_s_c"}
INVOICE_PATHS = ("/checkout/invoice", "/checkout/v1/invoice")
OTHER_PATHS = ("/checkout/payment-methods", "/checkout/v1/preferences/theme")
SESSION_TTL = 1  # seconds; with leeway 0, a session lives (0, 1] s: expiry happens
SLACK = 0.02  # seconds of clock slack around a session's exp


@dataclass
class LiveSession:
    token: str
    customer: str
    invoice: str
    expires_at: float
    auth: str
    revoked: bool = False


def _settings(url: URL, *, transport: str) -> Settings:
    settings = hardened_settings(
        url,
        jwt_auth=hs256_mode(customer_claim="customer", ownership_cache_ttl=0.0),
        admin=AdminSettings(enabled=True, api_key=ADMIN_KEY),
        server=ServerSettings(shutdown_timeout=1.0),
        session_ttl=SESSION_TTL,
    )
    return dataclasses.replace(
        settings,
        sessions=dataclasses.replace(settings.sessions, leeway=0),
        upstream=dataclasses.replace(settings.upstream, transport=transport),
    )


_examples = itertools.count()


class OwnershipMachine(RuleBasedStateMachine):
    # One sandbox and broker serve every example (cheap examples keep shrinking
    # short); each example starts from a reset sandbox log and its own baselines.
    stack: ClassVar[LiveStack]

    def __init__(self) -> None:
        super().__init__()
        self.live = self.stack.live
        self.live.run(self.stack.upstream.reset())
        # Invoices outlive a sandbox reset: each example names its own.
        self.tag = next(_examples)
        self.owners: dict[str, str] = {}
        for invoice, customer in FIRST_OWNERS.items():
            self._move(self._id(invoice), customer)
        self.sessions: list[LiveSession] = []
        self.request_keys: dict[str, tuple[str, str]] = {}
        self.upstream_seen = 0
        self.refusal_body: bytes | None = None
        self.pauses = 0
        self.revocations = 0
        registry = self.stack.registry
        self.issued_before = {
            auth: sample(registry, "broker_sessions_issued_total", {"auth": auth})
            for auth in ("jwt", "api_key")
        }

    # -- rules ------------------------------------------------------------------------

    @rule(
        user=st.sampled_from(sorted(USERS)),
        invoice=st.sampled_from(INVOICES),
        named=st.sampled_from([None, "own", *CUSTOMERS]),
    )
    def browser_asks_for_a_session(self, user: str, invoice: str, named: str | None) -> None:
        event(self.live.run(self._browser_init(user, self._id(invoice), named)))

    @rule(user=st.sampled_from(sorted(USERS)), invoice=st.sampled_from(INVOICES))
    def browser_asks_without_naming_a_customer(self, user: str, invoice: str) -> None:
        event(self.live.run(self._browser_init(user, self._id(invoice), None)))

    @precondition(lambda self: bool(self.owners))
    @rule(data=st.data(), named=st.booleans())
    def owner_asks_for_a_session(self, data: st.DataObject, named: bool) -> None:
        invoice = data.draw(st.sampled_from(sorted(self.owners)))
        user = next(u for u, c in USERS.items() if c == self.owners[invoice])
        event(self.live.run(self._browser_init(user, invoice, "own" if named else None)))

    @precondition(lambda self: bool(self.owners))
    @rule(data=st.data())
    def partner_backend_asks_for_its_customer(self, data: st.DataObject) -> None:
        invoice = data.draw(st.sampled_from(sorted(self.owners)))
        self.live.run(self._partner_init(self.owners[invoice], invoice))

    @rule(invoice=st.sampled_from(INVOICES), customer=st.sampled_from(CUSTOMERS))
    def invoice_changes_hands(self, invoice: str, customer: str) -> None:
        self._move(self._id(invoice), customer)

    @precondition(lambda self: bool(self.sessions))
    @rule(index=st.integers(0, 99), path=st.sampled_from(INVOICE_PATHS + OTHER_PATHS))
    def browser_calls_checkout(self, index: int, path: str) -> None:
        session = self.sessions[index % len(self.sessions)]
        event(self.live.run(self._proxy(session, path)))

    @precondition(lambda self: bool(self.sessions))
    @rule(
        indices=st.lists(st.integers(0, 99), min_size=2, max_size=8),
        inits=st.lists(
            st.tuples(st.sampled_from(sorted(USERS)), st.sampled_from(INVOICES)), max_size=3
        ),
    )
    def many_things_at_once(self, indices: list[int], inits: list[tuple[str, str]]) -> None:
        async def burst() -> list[str]:
            calls: list[Any] = [
                self._proxy(self.sessions[i % len(self.sessions)], INVOICE_PATHS[i % 2])
                for i in indices
            ]
            calls += [self._browser_init(user, self._id(inv), None) for user, inv in inits]
            # Let every call finish before failing, so none leaks into the next example.
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            return [outcome for outcome in outcomes if isinstance(outcome, str)]

        for outcome in self.live.run(burst()):
            event(outcome)

    @precondition(lambda self: self.revocations < 2)
    @rule(customer=st.sampled_from(CUSTOMERS))
    def operator_revokes_a_customer(self, customer: str) -> None:
        assert self.stack.admin_url is not None, "create_admin_app is missing"
        self.revocations += 1
        self.live.run(self._revoke(customer))

    @precondition(lambda self: self.pauses < 1 and bool(self.sessions))
    @rule()
    def time_passes(self) -> None:
        """Until the next live session has certainly expired (under a second)."""
        self.pauses += 1
        now = time.time()
        pending = [s.expires_at for s in self.sessions if s.expires_at > now]
        if pending:
            time.sleep(min(pending) - now + 2 * SLACK)
        expired = [s for s in self.sessions if s.expires_at + SLACK < time.time()][-3:]
        for session in expired:
            event(self.live.run(self._proxy(session, INVOICE_PATHS[0])))

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def upstream_only_ever_saw_the_sessions_own_pairs(self) -> None:
        recorded = self.live.run(self.stack.upstream.requests())
        new, self.upstream_seen = recorded[self.upstream_seen :], len(recorded)
        issued = {(s.customer, s.invoice) for s in self.sessions}
        for entry in new:
            path = entry["raw_path"]
            if path.startswith("/checkout"):
                (request_id,) = header_values(entry, "X-Request-Id")
                assert request_id in self.request_keys, entry
                (bearer,) = header_values(entry, "Authorization")
                claims = unverified(bearer.removeprefix("Bearer "))
                pair = (claims["customer_id"], claims["invoice_id"])
                assert pair == self.request_keys[request_id], (pair, entry)
            elif path.endswith("checkout-auth/init"):
                minted = json.loads(entry["body"])
                assert (minted["customer_id"], minted["invoice_id"]) in issued, minted

    @invariant()
    def every_issued_session_is_accounted_for(self) -> None:
        registry = self.stack.registry
        for auth in ("jwt", "api_key"):
            ours = sum(1 for s in self.sessions if s.auth == auth)
            issued = sample(registry, "broker_sessions_issued_total", {"auth": auth})
            assert issued - self.issued_before[auth] == ours, auth

    # -- helpers --------------------------------------------------------------------

    def _id(self, invoice: str) -> str:
        return f"{invoice}_{self.tag}"

    def _move(self, invoice: str, customer: str) -> None:
        self.live.run(
            self.stack.upstream.post("/_sandbox/invoices", {"id": invoice, "customer_id": customer})
        )
        self.owners[invoice] = customer

    async def _browser_init(self, user: str, invoice: str, named: str | None) -> str:
        own = USERS[user]
        customer = own if named == "own" else named
        body = {"invoice_id": invoice} | ({} if customer is None else {"customer_id": customer})
        idp_token = sign_idp("hs256", idp_claims(user, customer=own))
        async with self.stack.client.post(
            self.stack.broker_url / "v1/checkout-auth/init",
            json=body,
            headers={"Authorization": f"Bearer {idp_token}"},
        ) as response:
            status, raw = response.status, await response.read()
        if self.owners.get(invoice) == own and customer in (None, own):
            assert status == 200, (user, invoice, customer, raw)
            self._record(json.loads(raw), own, invoice, "jwt")
            return "init: owner got a session"
        assert status == 404, (user, invoice, customer, self.owners, raw)
        assert json.loads(raw) == NOT_FOUND_BODY
        self.refusal_body = self.refusal_body or raw
        assert raw == self.refusal_body
        return "init: uniform 404"

    async def _partner_init(self, customer: str, invoice: str) -> None:
        async with self.stack.client.post(
            self.stack.broker_url / "v1/checkout-auth/init",
            json={"customer_id": customer, "invoice_id": invoice},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as response:
            assert response.status == 200
            self._record(await response.json(), customer, invoice, "api_key")

    def _record(self, body: dict[str, Any], customer: str, invoice: str, auth: str) -> None:
        claims = unverified(body["token"])
        assert (claims["customer_id"], claims["invoice_id"], claims["sub"]) == (
            customer,
            invoice,
            customer,
        )
        assert body["expires_at"] == claims["exp"]
        self.sessions.append(LiveSession(body["token"], customer, invoice, claims["exp"], auth))

    async def _proxy(self, session: LiveSession, path: str) -> str:
        request_id = uuid.uuid4().hex
        self.request_keys[request_id] = (session.customer, session.invoice)
        sent = time.time()
        async with self.stack.client.get(
            self.stack.broker_url.with_path(path),
            headers={"Authorization": f"Bearer {session.token}", "X-Request-Id": request_id},
        ) as response:
            status, raw = response.status, await response.read()
        answered = time.time()
        context = (session, path, status, raw[:200])
        assert status < 500, context
        if session.revoked:
            assert status == 401, context
            return "proxy: revoked session refused"
        if sent > session.expires_at + SLACK:
            assert status == 401, context
            return "proxy: expired session refused"
        if answered >= session.expires_at - SLACK:
            assert status in {200, 401, 404}, context  # expiring while in flight
            return "proxy: session expiring in flight"
        owner = self.owners.get(session.invoice) == session.customer
        if path not in INVOICE_PATHS:
            # Not about the invoice, so served even after it moved away, unless the
            # checkout JWT still has to be minted: the upstream refuses that mint.
            assert status == 200 if owner else status in {200, 404}, context
            return "proxy: live session served"
        if owner:
            assert status == 200, context
            invoice = json.loads(raw)
            assert (invoice["id"], invoice["customer_id"]) == (session.invoice, session.customer)
            return "proxy: owner reached the invoice"
        assert status == 404, context  # moved away since: the upstream says so
        return "proxy: invoice moved away, upstream 404"

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
        assert body["sessions_revoked_before"] <= time.time()
        for session in self.sessions:
            if session.customer == customer:
                session.revoked = True


# Slow: it waits for sessions to expire on the wall clock. Fast, the same invariants in
# one state: tests/security/test_ownership_matrix.py (every user x customer x invoice),
# revocation in tests/security/test_admin.py, expiry in tests/auth/test_sessions.py.
@pytest.mark.slow
@pytest.mark.forwarding
def test_sessions_and_upstream_tokens_always_match_the_owner(transport: str) -> None:
    """20 examples of up to 15 steps in all, shared between the upstream transports."""
    live = LiveLoop()
    stack = LiveStack(live)
    broker_settings = functools.partial(_settings, transport=transport)
    live.run(stack.start(broker_settings, SandboxSettings(synthesize_unknown=False)))
    OwnershipMachine.stack = stack
    try:
        run_state_machine_as_test(
            OwnershipMachine,
            settings=settings(
                max_examples=20 // len(TRANSPORTS),
                stateful_step_count=15,
                deadline=None,
                database=None,
                # No shrinking: replays against live servers take minutes, and a
                # failure already prints its whole (at most 15-step) sequence.
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        live.run(stack.stop())
        live.close()
