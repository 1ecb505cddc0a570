"""Calls made with the partner's credentials: the OAuth token and checkout JWT mints."""

from __future__ import annotations

import email.utils
import json
import math
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeGuard

import aiohttp
from yarl import URL

from broker.config.model import Credential, PartnerSettings, UpstreamSettings
from broker.credentials import TokenKey, key_ids, unverified_claims
from broker.errors import (
    BadGateway,
    BrokerError,
    CredentialsRejected,
    NotFound,
    TokenMismatch,
)
from broker.headers import (
    ACCEPT,
    AUTHORIZATION,
    BROKER_USER_AGENT,
    CONTENT_TYPE,
    RETRY_AFTER,
    USER_AGENT,
)
from broker.observability.logs import get_logger
from broker.observability.metrics import Metrics
from broker.observability.tracing import CLIENT, Span, Tracing, maybe_inject, maybe_span
from broker.upstream.calls import (
    CallRecord,
    TransientUpstreamError,
    UpstreamCall,
    retry_after_seconds,
)

__all__ = ["MintedToken", "OAuthToken", "PartnerApi", "TransientUpstreamError"]

log = get_logger("broker.upstream.partner_api")

MAX_ANSWER_BYTES = 64 * 1024
# The default for the longest lifetime believed from an answer (tokens.max_lifetime).
MAX_LIFETIME = 86_400.0


class UpstreamRateLimited(BrokerError):
    """The upstream answered 429; ``retry_after`` says for how long to hold off."""

    status = 503
    code = "upstream_rate_limited"
    message = "The payment service is busy; retry shortly."


class PartnerTokenRejected(BrokerError):
    """The partner OAuth token was refused (401): fetch a new one and retry once."""

    status = 503
    code = "upstream_unavailable"
    message = "The payment service is unavailable; retry shortly."


@dataclass(frozen=True, slots=True)
class OAuthToken:
    access_token: str
    expires_in: float

    def __repr__(self) -> str:
        return f"OAuthToken(access_token=<redacted>, expires_in={self.expires_in!r})"


@dataclass(frozen=True, slots=True)
class MintedToken:
    """A minted checkout JWT; ``upstream_now`` is the upstream's clock when it answered
    (the JWT's ``iat``, else its ``Date`` header) and ``received_at`` ours, both unix
    seconds: together they measure the skew between the two clocks."""

    token: str
    expires_at: float
    upstream_now: float | None = None
    received_at: float | None = None
    claims: dict[str, object] | None = None

    def __repr__(self) -> str:
        return f"MintedToken(token=<redacted>, expires_at={self.expires_at!r})"


class PartnerApi:
    """One partner account's endpoints upstream, over the app's shared client session.

    The account may hold two OAuth credentials (rotation): the active one is used, and
    ``fall_back`` switches to the other when the upstream rejects it. Tokens minted with
    either are this partner's, so either client id is accepted in a minted token.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: UpstreamSettings,
        partner: PartnerSettings,
        metrics: Metrics,
        *,
        max_lifetime: float = MAX_LIFETIME,
        tracing: Tracing | None = None,
    ) -> None:
        self._session = session
        self._tracing = tracing
        self._max_lifetime = max_lifetime
        self._metrics = metrics
        self.partner_id = partner.id
        self._token_url = _join(partner.base_url, settings.token_path)
        self._init_url = _join(partner.base_url, settings.checkout_init_path)
        self._base_url = partner.base_url
        self._credentials: tuple[Credential, ...] = ()
        self._active = 0
        self.set_credentials(partner.credentials)

    @property
    def active_client_id(self) -> str:
        return self._credentials[self._active].client_id

    @property
    def on_secondary(self) -> bool:
        """Whether the credential in use is not the first configured one."""
        return self._active != 0

    def set_credentials(self, credentials: tuple[Credential, ...]) -> None:
        """Use *credentials* from now on (a reload); the active one stays active if it is
        still configured, else the first is."""
        active = self.active_client_id if self._credentials else None
        self._credentials = credentials
        ids = [credential.client_id for credential in credentials]
        self._active = ids.index(active) if active in ids else 0
        self._client_ids = frozenset(ids)

    def fall_back(self) -> bool:
        """Switch to the other configured credential; False when there is none."""
        if len(self._credentials) < 2:
            return False
        self._active = (self._active + 1) % len(self._credentials)
        return True

    def promote(self, client_id: str) -> bool:
        """Make *client_id*'s credential the primary one, in use from now on (until a
        reload reads the configured order again); False if none is configured."""
        chosen = [c for c in self._credentials if c.client_id == client_id]
        if not chosen:
            return False
        self._credentials = (*chosen, *(c for c in self._credentials if c not in chosen))
        self._active = 0
        return True

    async def fetch_oauth_token(self) -> OAuthToken:
        credential = self._credentials[self._active]
        basic = aiohttp.encode_basic_auth(credential.client_id, credential.client_secret)
        headers = _headers(basic, "application/x-www-form-urlencoded")
        form = b"grant_type=client_credentials"
        with self._span("oauth", "POST", self._token_url, headers) as span:
            token = await self._fetch_oauth_token(headers, form, span)
            span.set("broker.token.lifetime_s", round(token.expires_in, 3))
            return token

    async def _fetch_oauth_token(
        self, headers: dict[str, str], form: bytes, span: Span
    ) -> OAuthToken:
        async with (
            UpstreamCall(self._metrics, "oauth") as record,
            self._session.post(
                self._token_url, headers=headers, data=form, allow_redirects=False
            ) as response,
        ):
            record.status = str(response.status)
            span.set("http.response.status_code", response.status)
            if response.status in {400, 401, 403}:
                raise CredentialsRejected(
                    f"token endpoint answered {response.status}", retry_after=5.0
                )
            _raise_for_unexpected(response)
            body = await _json_object(response, record)
        token, expires_in = body.get("access_token"), body.get("expires_in")
        token_type = body.get("token_type", "bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise BadGateway("token endpoint answered a token_type other than bearer")
        if not _usable_token(token) or not _positive_number(expires_in):
            raise BadGateway("token endpoint answer lacks access_token/expires_in")
        lifetime = self._clamped("oauth", "expires_in", float(expires_in))
        return OAuthToken(access_token=token, expires_in=lifetime)

    async def mint_checkout_token(self, bearer: str, key: TokenKey) -> MintedToken:
        headers = _headers(f"Bearer {bearer}", "application/json")
        customer_id, invoice_id = key_ids(key)
        payload = json.dumps({"customer_id": customer_id, "invoice_id": invoice_id})
        with self._span("mint", "POST", self._init_url, headers) as span:
            span.set("broker.customer_id", customer_id)
            span.set("broker.invoice_id", invoice_id)
            return await self._mint(headers, payload, key, span)

    async def _mint(
        self, headers: dict[str, str], payload: str, key: TokenKey, span: Span
    ) -> MintedToken:
        async with (
            UpstreamCall(self._metrics, "mint") as record,
            self._session.post(
                self._init_url, headers=headers, data=payload.encode(), allow_redirects=False
            ) as response,
        ):
            record.status = str(response.status)
            span.set("http.response.status_code", response.status)
            if response.status == 401:
                raise PartnerTokenRejected("init answered 401 to the partner token")
            if response.status in {400, 403, 404, 422}:
                # The upstream does not know this pair: the one uniform answer.
                raise NotFound(f"init answered {response.status}")
            _raise_for_unexpected(response)
            body = await _json_object(response, record)
            date = response.headers.get("Date")
        received_at = time.time()
        # Some of the vendor's environments name it access_token.
        token = body.get("token") or body.get("access_token")
        expires_at = body.get("expires_at")
        if not _usable_token(token) or not _positive_number(expires_at):
            raise BadGateway("init answer lacks token/expires_at")
        claims = unverified_claims(token)
        upstream_now = _http_date(date)
        if claims is not None:
            upstream_now = self._check_claims(claims, key, upstream_now)
            exp = claims.get("exp")
            if exp is not None:
                if not _positive_number(exp):
                    raise BadGateway("minted token has an exp that is not a finite number")
                expires_at = min(float(expires_at), float(exp))
        reference = received_at if upstream_now is None else upstream_now
        lifetime = self._clamped("mint", "expires_at", float(expires_at) - reference)
        return MintedToken(
            token=token,
            expires_at=reference + lifetime,
            upstream_now=upstream_now,
            received_at=received_at,
            claims=claims,
        )

    def _check_claims(
        self, claims: dict[str, object], key: TokenKey, upstream_now: float | None
    ) -> float | None:
        """Refuse a token minted for another partner client, customer or invoice; the
        upstream's clock from ``iat`` when it is a finite number."""
        if "client_id" in claims and claims["client_id"] not in self._client_ids:
            log.error(
                "checkout_token_mismatch", partner=self.partner_id, key=key, claim="client_id"
            )
            raise TokenMismatch("minted token carries another client_id")
        customer_id, invoice_id = key_ids(key)
        for claim, expected in (("customer_id", customer_id), ("invoice_id", invoice_id)):
            if claim in claims and claims[claim] != expected:
                log.error("checkout_token_mismatch", key=key, claim=claim)
                raise TokenMismatch(f"minted token carries another {claim}")
        iat = claims.get("iat")
        if iat is None:
            return upstream_now
        if not _positive_number(iat):
            raise BadGateway("minted token has an iat that is not a finite number")
        return float(iat)

    def _clamped(self, kind: str, field: str, lifetime: float) -> float:
        if lifetime > self._max_lifetime:
            log.warning(
                "upstream_lifetime_clamped",
                kind=kind,
                field=field,
                lifetime_s=round(lifetime),
                max_lifetime_s=self._max_lifetime,
            )
            return self._max_lifetime
        return lifetime

    async def get_json(self, bearer: str, path: str, kind: str) -> dict[str, Any] | None:
        """GET a partner resource; None when it does not exist (404)."""
        headers = _headers(f"Bearer {bearer}")
        url = _join(self._base_url, path)
        with self._span(kind, "GET", url, headers) as span:
            return await self._get_json(url, headers, kind, span)

    async def _get_json(
        self, url: URL, headers: dict[str, str], kind: str, span: Span
    ) -> dict[str, Any] | None:
        async with (
            UpstreamCall(self._metrics, kind) as record,
            self._session.get(url, headers=headers, allow_redirects=False) as response,
        ):
            record.status = str(response.status)
            span.set("http.response.status_code", response.status)
            if response.status == 401:
                raise PartnerTokenRejected(f"{kind} answered 401 to the partner token")
            if response.status in {400, 403, 404}:
                return None
            _raise_for_unexpected(response)
            return await _json_object(response, record)

    def _span(self, kind: str, method: str, url: URL, headers: dict[str, str]) -> _CallSpan:
        return _CallSpan(self._tracing, kind, method, url, headers)


class _CallSpan:
    """A partner call's client span (when tracing is on), its traceparent in *headers*."""

    __slots__ = ("_headers", "_kind", "_method", "_scope", "_tracing", "_url")

    def __init__(
        self, tracing: Tracing | None, kind: str, method: str, url: URL, headers: dict[str, str]
    ) -> None:
        self._scope = maybe_span(tracing, f"{method} {kind}", CLIENT)
        self._tracing = tracing
        self._kind, self._method, self._url, self._headers = kind, method, url, headers

    def __enter__(self) -> Span:
        span = self._scope.__enter__()
        span.set("http.request.method", self._method)
        span.set("server.address", self._url.host or "")
        if self._url.port is not None:
            span.set("server.port", self._url.port)
        span.set("url.path", self._url.raw_path)  # a configured path or /invoices/{id}
        span.set("broker.upstream.kind", self._kind)
        maybe_inject(self._tracing, self._headers)
        return span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._scope.__exit__(exc_type, exc, traceback)


def _headers(authorization: str, content_type: str | None = None) -> dict[str, str]:
    headers: dict[str, str] = {
        AUTHORIZATION: authorization,
        ACCEPT: "application/json",
        USER_AGENT: BROKER_USER_AGENT,
    }
    if content_type is not None:
        headers[CONTENT_TYPE] = content_type
    return headers


def _join(base: URL, path: str) -> URL:
    return URL(str(base).rstrip("/") + path, encoded=True)


def _positive_number(value: object) -> TypeGuard[float]:
    """A finite number above zero; an int too large for a float is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        number = float(value)
    except OverflowError:
        return False
    return math.isfinite(number) and number > 0


def _usable_token(value: object) -> TypeGuard[str]:
    # A header value: printable ASCII without spaces, of a sane length.
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ANSWER_BYTES
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )


def _http_date(value: str | None) -> float | None:
    """An HTTP ``Date`` as unix seconds, or None when absent or unparsable."""
    if value is None:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def _raise_for_unexpected(response: aiohttp.ClientResponse) -> None:
    if response.status == 429:
        raise UpstreamRateLimited(
            "upstream answered 429",
            retry_after=retry_after_seconds(response.headers.get(RETRY_AFTER)),
        )
    if response.status >= 500:
        raise TransientUpstreamError(f"upstream answered {response.status}", retry_after=1.0)
    if response.status != 200:
        # Redirects and unexpected statuses are not something a partner call can use.
        raise BadGateway(f"upstream answered {response.status}")


async def _json_object(response: aiohttp.ClientResponse, record: CallRecord) -> dict[str, Any]:
    try:
        raw = await _read_answer(response)
    except (aiohttp.ClientPayloadError, aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
        # Cut off or reset mid-answer: nothing wrong with what we asked, so try again.
        record.status = "truncated"
        raise TransientUpstreamError("upstream answer cut off", retry_after=1.0) from None
    if len(raw) > MAX_ANSWER_BYTES:
        raise BadGateway("upstream answer too large")
    body = _loads(raw)
    if not isinstance(body, dict):
        raise BadGateway("upstream answer is not a JSON object")
    return body


async def _read_answer(response: aiohttp.ClientResponse) -> bytes:
    """The whole body (at most one byte past the limit), or ClientPayloadError when
    it ends before its Content-Length or chunked framing says it is complete."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_ANSWER_BYTES:
        chunk = await response.content.read(MAX_ANSWER_BYTES + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _loads(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested JSON
        raise BadGateway("upstream answer is not JSON") from exc
