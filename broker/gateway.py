"""The gateway's long-lived collaborators, created once per app and closed with it.

What the configuration makes (session keys, API keys, CORS, limits, partner accounts)
can be replaced while the gateway runs: ``reload`` builds the new set completely, then
swaps it in between two requests. A request in flight keeps the objects it started
with; a partner account that a reload replaced or removed is closed once such
requests are done, and accounts a reload did not change are kept with their tokens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from broker.accounts import Account, identity_of, open_account
from broker.auth.identity import IdentityVerifier
from broker.auth.revocations import Revocations
from broker.auth.sessions import (
    ApiKeys,
    AuthFailure,
    Retired,
    Session,
    SessionAuthority,
    key_id,
)
from broker.config.model import SessionSettings, Settings
from broker.credentials import customer_of
from broker.errors import BrokerError, ServiceUnavailable
from broker.observability.logs import get_logger
from broker.observability.metrics import Metrics
from broker.observability.tracing import Tracing
from broker.proxy.cors import CorsPolicy
from broker.proxy.throttle import TokenBuckets
from broker.upstream.calls import open_session

if TYPE_CHECKING:
    import aiohttp

    from broker.redis.reloads import ClusterReloads

log = get_logger("broker.gateway")

# What a reload cannot change: listeners, processes and what the app was built with.
RESTART_ONLY = (
    ("server", "host"),
    ("server", "port"),
    ("server", "workers"),
    ("server", "shutdown_timeout"),
    ("admin", "enabled"),
    ("admin", "host"),
    ("admin", "port"),
    ("cache", "backend"),
    ("cache", "redis_url"),
    ("cache", "namespace"),
    ("limits", "max_body_bytes"),
    ("limits", "header_timeout"),
    ("upstream", "proxy_prefixes"),
)
RESTART_ONLY_TOP = (
    "metrics_port", "metrics_host", "metrics_bearer_token", "log_format", "log_level"
)  # fmt: skip


class ReloadRefused(Exception):
    """The new configuration changes what only a restart can; ``problems`` says what."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """Per partner id: "kept", "updated" (credentials), "added", "replaced", "removed"."""

    partners: dict[str, str]
    signing_key_rotated: bool


def restart_only_changes(running: Settings, new: Settings) -> list[str]:
    problems = []
    for section, name in RESTART_ONLY:
        if getattr(getattr(running, section), name) != getattr(getattr(new, section), name):
            problems.append(f"{section}.{name}: changed, which needs a restart (a reload cannot)")
    for name in RESTART_ONLY_TOP:
        if getattr(running, name) != getattr(new, name):
            dotted = name.replace("_", ".", 1).replace("log.", "logging.")
            problems.append(f"{dotted}: changed, which needs a restart (a reload cannot)")
    return problems


class Gateway:
    """Stored once under ``gateway_key``; runtime state lives inside, never in app keys."""

    def __init__(
        self, settings: Settings, metrics: Metrics, tracing: Tracing | None = None
    ) -> None:
        self.metrics = metrics
        # None when tracing is off: each place a span would start tests it, nothing more.
        self.tracing = tracing
        self.draining = False
        # Revoked sessions must stay refused for as long as they could be presented.
        self.revocations = Revocations(settings.sessions.ttl + settings.sessions.leeway)
        self._http: aiohttp.ClientSession | None = None
        self._accounts: dict[str, Account] = {}
        self._first: Account | None = None
        self._warmup: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        # Accounts a reload replaced or removed, until they are closed (see _retire).
        self._retired: set[Account] = set()
        # With Redis: how a reload here reaches the other replicas.
        self.peers: ClusterReloads | None = None
        self.settings = settings
        self.sessions = SessionAuthority(settings.sessions)
        self._configure(settings, None)

    def _configure(self, settings: Settings, previous: Settings | None) -> None:
        """What the configuration makes apart from the accounts; kept where unchanged
        (a throttle keeps its buckets, the IdP verifier its JWKS)."""
        self.settings = settings
        self.api_keys = ApiKeys.of({p.id: p.api_keys for p in settings.partners})
        self.admin_keys = ApiKeys((settings.admin.api_key,))
        self.cors = CorsPolicy(settings.cors)
        limits = settings.limits
        if previous is None or previous.limits != limits:
            self.ip_throttle = TokenBuckets(limits.ip_requests_per_second, limits.ip_burst)
            self.session_throttle = TokenBuckets(
                limits.session_requests_per_second, limits.session_burst
            )
            self.init_throttle = TokenBuckets(limits.init_requests_per_second, limits.init_burst)
        if previous is None or previous.jwt_auth != settings.jwt_auth:
            self.identity = (
                IdentityVerifier(settings.jwt_auth, lambda: self.http)
                if settings.jwt_auth.enabled
                else None
            )

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("the gateway is not started")
        return self._http

    @property
    def first(self) -> Account:
        """The first configured partner account: the one browser-direct (IdP) sessions
        belong to, and whose targets judge a proxied path before its session is known."""
        if self._first is None:
            raise RuntimeError("the gateway is not started")
        return self._first

    @property
    def accounts(self) -> dict[str, Account]:
        return self._accounts

    def account(self, partner: str) -> Account:
        """The account of a session's partner; 401 when it is configured no longer."""
        account = self._accounts.get(partner)
        if account is None:
            raise AuthFailure("unknown_partner")
        return account

    async def start(self) -> None:
        self.metrics.track_loop_tasks(asyncio.get_running_loop())
        self._http = open_session(self.settings.upstream)
        try:
            for partner in self.settings.partners:
                self._accounts[partner.id] = await open_account(
                    self.settings, partner, self._http, self.metrics, self.tracing
                )
        except BaseException:
            await self.close()
            raise
        self._first = self._accounts[self.settings.partners[0].id]
        if self.settings.cache.backend == "redis":
            # Imported here: redis is an optional extra, needed only for this backend.
            from broker.redis.reloads import ClusterReloads  # noqa: PLC0415

            self.peers = await ClusterReloads.open(self.settings.cache, self.metrics)
        # Fetch the partner tokens now so that readiness tells the truth from the start.
        self._warmup = asyncio.get_running_loop().create_task(self._probe_all())

    async def _probe_all(self) -> None:
        await asyncio.gather(*(a.partner_token.probe() for a in self._accounts.values()))

    async def close(self) -> None:
        if self._warmup is not None:
            self._warmup.cancel()
            await asyncio.gather(self._warmup, return_exceptions=True)
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for account in [*self._retired, *self._accounts.values()]:
            await account.close()
        self._retired.clear()
        if self.peers is not None:
            await self.peers.close()
            self.peers = None
        self._accounts = {}
        self._first = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self.tracing is not None:
            # Exports what is buffered: blocking network I/O, off the event loop.
            await asyncio.to_thread(self.tracing.close)

    async def reload(self, settings: Settings) -> ReloadOutcome:
        """Take *settings* (loaded and validated) for new requests; ReloadRefused when
        it changes what needs a restart. Nothing changes unless everything could."""
        if problems := restart_only_changes(self.settings, settings):
            raise ReloadRefused(problems)
        settings = keep_decrypting(settings, self.settings)
        running = self._accounts
        accounts, outcome, opened = await self._accounts_for(settings)
        # From here on, no await: the swap happens between two requests.
        for partner in settings.partners:
            account, old = accounts[partner.id], running.get(partner.id)
            if outcome[partner.id] == "updated":
                account.adopt(partner)
            elif (
                old is not None
                and old is not account
                and old.token_identity == account.token_identity
            ):
                # Rebuilt for a setting its tokens do not depend on: keep them, so a
                # reload never sends every hot key back to the rate budget.
                account.tokens.adopt(old.tokens)
        retired = [a for pid, a in running.items() if accounts.get(pid) is not a]
        outcome.update({pid: "removed" for pid in running if pid not in accounts})
        grace = retire_grace(self.settings)  # the timeouts the retired accounts run with
        rotated = self._rotate_sessions(settings)
        # Revocations made from now on must outlive the sessions the new settings issue.
        self.revocations.lengthen(settings.sessions.ttl + settings.sessions.leeway)
        self._configure(settings, self.settings)
        self._accounts = accounts
        self._first = accounts[settings.partners[0].id]
        for account in retired:
            self._retire(account, grace, forget=account.id not in accounts)
        for account in opened:
            self._warm(account)
        log.info("config_reloaded", partners=outcome, signing_key_rotated=rotated)
        return ReloadOutcome(partners=outcome, signing_key_rotated=rotated)

    async def _accounts_for(
        self, settings: Settings
    ) -> tuple[dict[str, Account], dict[str, str], list[Account]]:
        """The accounts *settings* needs: running ones it leaves as they are, new ones
        opened (all closed again if one fails); and each partner's outcome."""
        accounts: dict[str, Account] = {}
        outcome: dict[str, str] = {}
        opened: list[Account] = []
        try:
            for partner in settings.partners:
                old = self._accounts.get(partner.id)
                if old is not None and old.identity == identity_of(settings, partner):
                    accounts[partner.id] = old
                    outcome[partner.id] = "kept" if old.settings == partner else "updated"
                    continue
                account = await open_account(
                    settings, partner, self.http, self.metrics, self.tracing
                )
                opened.append(account)
                accounts[partner.id] = account
                outcome[partner.id] = "added" if old is None else "replaced"
        except BaseException:
            for account in opened:
                await account.close()
            raise
        return accounts, outcome, opened

    def _rotate_sessions(self, settings: Settings) -> bool:
        """A new session authority when the session settings changed; the keys the old
        one verified keep verifying while sessions they signed can still be presented."""
        before = self.settings.sessions
        if before == settings.sessions:
            return False
        until = time.time() + before.ttl + before.leeway
        retired: Retired = self.sessions.retiring(until)
        self.sessions = SessionAuthority(settings.sessions, retired=retired)
        return _kid(before) != _kid(settings.sessions)

    def _retire(self, account: Account, grace: float, *, forget: bool) -> None:
        """Drop a replaced or removed account's tokens now; close it *grace* seconds
        later, once requests that started with it are done (see ``retire_grace``)."""
        dropped = account.tokens.evict_all()
        log.info("partner_account_retired", partner=account.id, tokens_dropped=dropped)
        if forget:
            self.metrics.forget_partner(account.id)

        async def close_later() -> None:
            await asyncio.sleep(grace)
            self._retired.discard(account)
            await account.close()

        self._retired.add(account)
        task = asyncio.get_running_loop().create_task(close_later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _warm(self, account: Account) -> None:
        task = asyncio.get_running_loop().create_task(account.partner_token.probe())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def authenticate(self, token: str) -> tuple[Session, Account]:
        """The session behind a browser's bearer token and the account that serves it,
        unless the token is invalid or revoked or its partner is no longer served."""
        session = self.sessions.verify(token)
        account = self._accounts.get(session.partner)
        if account is None:  # a partner a reload took out
            raise AuthFailure("unknown_partner", session.key)
        shared = account.shared
        if shared is None and self.revocations.empty():
            return session, account  # the usual case: no customer_id to split off the key
        customer_id = customer_of(session.key)
        if self.revocations.revoked(customer_id, session.issued_at):
            raise AuthFailure("revoked", session.key)
        if shared is not None:
            # Read on every request, so a revocation on any replica holds on the next one.
            before = await shared.revoked_before(customer_id)
            if before is not None and session.issued_at <= before:
                raise AuthFailure("revoked", session.key)
        return session, account

    async def revoke_customer(self, customer_id: str, before: float) -> int:
        """Evict the customer's checkout JWTs and refuse their sessions issued so far,
        in every partner account (a customer id names no partner)."""
        self.revocations.revoke(customer_id, before)
        evicted = 0
        # The longest a session refused here may still be presented, across reloads.
        until = before + self.revocations.session_ttl
        accounts = list(self._accounts.values())
        for account in accounts:  # here first, in every account, whatever Redis does
            evicted += account.tokens.evict_customer(customer_id)
        unshared: ServiceUnavailable | None = None
        for account in accounts:
            shared = account.shared
            if shared is None:
                continue
            try:  # every replica
                await shared.revoke_sessions(customer_id, before, until)
                await shared.publish_eviction(customer_id)
            except ServiceUnavailable as exc:  # the others' Redis may still answer
                unshared = unshared or exc
        if unshared is not None:
            raise unshared  # a 503 tells the operator the revocation is not shared
        return evicted

    def readiness_notes(self) -> list[str]:
        """What readiness should say about a mode that still serves (answered with 200):
        Redis unreachable, a secondary credential in use, a partner not served now."""
        notes = [a.readiness_note() for a in self._accounts.values()]
        if len(self._accounts) == 1:  # the single account's notes, as they always read
            return [note.split(": ", 1)[1] for note in notes if note is not None]
        notes += [
            f"partner {pid}: not served now (no partner token)"
            for pid, account in self._accounts.items()
            if not account.partner_token.has_valid_token()
        ]
        return [note for note in notes if note is not None]

    async def readiness_problems(self) -> list[str]:
        """Why this instance should not get traffic now; empty when ready. With several
        partners, one that cannot be served is a note: the others still are."""
        if self.draining:
            return ["shutting down"]
        if self._first is None:
            return ["not started"]
        problems = {pid: await _problem(a) for pid, a in self._accounts.items()}
        failing = {pid: problem for pid, problem in problems.items() if problem is not None}
        if len(self._accounts) == 1:
            return list(failing.values())
        if len(failing) == len(self._accounts):
            return [f"partner {pid}: {problem}" for pid, problem in failing.items()]
        return []

    def promote(self, partner: str, client_id: str) -> bool:
        """Make *client_id* the partner's primary credential; False if it has none such."""
        account = self._accounts.get(partner)
        if account is None:
            return False
        promoted = account.api.promote(client_id)
        if promoted:
            log.warning("partner_credential_promoted", partner=partner, client_id=client_id)
        return promoted


async def _problem(account: Account) -> str | None:
    partner = account.partner_token
    await partner.probe()
    if partner.has_valid_token():
        return None
    error = partner.last_error
    if partner.credentials_rejected:
        return "partner credentials rejected by the upstream token endpoint"
    if isinstance(error, BrokerError):
        return f"partner token unavailable ({error.code})"
    return "partner token not yet obtained"


def retire_grace(settings: Settings) -> float:
    """How long a request that started with an account may still use it: a wait on the
    mint budget, the mint, then the forwarded call. One still waiting past that (a
    retried mint, a slow OAuth fetch first) gets a 503 when the account closes."""
    upstream = settings.upstream
    call = upstream.connect_timeout + upstream.read_timeout
    return upstream.rate_limit_max_wait + call + upstream.pool_wait + call


def _kid(sessions: SessionSettings) -> str:
    return key_id(sessions.signing_key.public_key())


def keep_decrypting(settings: Settings, running: Settings) -> Settings:
    """*settings*, whose cache also decrypts with the keys *running* encrypted with: a
    reload that rotates ``cache.encryption_key`` keeps reading the tokens sealed before."""
    keys = settings.cache.encryption_keys
    old = [k for k in running.cache.encryption_keys if k not in keys]
    if not old:
        return settings
    cache = dataclasses.replace(settings.cache, encryption_keys=(*keys, *old))
    return dataclasses.replace(settings, cache=cache)
