"""Calls made with the partner's credentials: the OAuth token and checkout JWT mints."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, TypeGuard

import aiohttp
from yarl import URL

from broker.config.model import UpstreamSettings
from broker.credentials import TokenKey
from broker.errors import (
    BadGateway,
    BrokerError,
    CredentialsRejected,
    NotFound,
    ServiceUnavailable,
)
from broker.headers import (
    ACCEPT,
    AUTHORIZATION,
    BROKER_USER_AGENT,
    CONTENT_TYPE,
    RETRY_AFTER,
    USER_AGENT,
)
from broker.observability.metrics import Metrics
from broker.upstream.calls import UpstreamCall, retry_after_seconds

MAX_ANSWER_BYTES = 64 * 1024


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


@dataclass(frozen=True, slots=True)
class MintedToken:
    token: str
    expires_at: float


class PartnerApi:
    """The upstream's partner endpoints, over the app's shared client session."""

    def __init__(
        self, session: aiohttp.ClientSession, settings: UpstreamSettings, metrics: Metrics
    ) -> None:
        self._session = session
        self._metrics = metrics
        self._token_url = _join(settings.base_url, settings.token_path)
        self._init_url = _join(settings.base_url, settings.checkout_init_path)
        self._base_url = settings.base_url
        self._basic = aiohttp.encode_basic_auth(settings.client_id, settings.client_secret)

    async def fetch_oauth_token(self) -> OAuthToken:
        headers = _headers(self._basic, "application/x-www-form-urlencoded")
        form = b"grant_type=client_credentials"
        async with (
            UpstreamCall(self._metrics, "oauth") as record,
            self._session.post(
                self._token_url, headers=headers, data=form, allow_redirects=False
            ) as response,
        ):
            record.status = str(response.status)
            if response.status in {400, 401, 403}:
                raise CredentialsRejected(
                    f"token endpoint answered {response.status}", retry_after=5.0
                )
            _raise_for_unexpected(response)
            body = await _json_object(response)
        token, expires_in = body.get("access_token"), body.get("expires_in")
        if not isinstance(token, str) or not token or not _positive_number(expires_in):
            raise BadGateway("token endpoint answer lacks access_token/expires_in")
        return OAuthToken(access_token=token, expires_in=float(expires_in))

    async def mint_checkout_token(self, bearer: str, key: TokenKey) -> MintedToken:
        headers = _headers(f"Bearer {bearer}", "application/json")
        payload = json.dumps({"customer_id": key.customer_id, "invoice_id": key.invoice_id})
        async with (
            UpstreamCall(self._metrics, "mint") as record,
            self._session.post(
                self._init_url, headers=headers, data=payload.encode(), allow_redirects=False
            ) as response,
        ):
            record.status = str(response.status)
            if response.status == 401:
                raise PartnerTokenRejected("init answered 401 to the partner token")
            if response.status in {400, 403, 404, 422}:
                # The upstream does not know this pair: the one uniform answer.
                raise NotFound(f"init answered {response.status}")
            _raise_for_unexpected(response)
            body = await _json_object(response)
        # Some environments name it access_token (upstream-api.md §2).
        token = body.get("token") or body.get("access_token")
        expires_at = body.get("expires_at")
        if not isinstance(token, str) or not token or not _positive_number(expires_at):
            raise BadGateway("init answer lacks token/expires_at")
        return MintedToken(token=token, expires_at=float(expires_at))

    async def get_json(self, bearer: str, path: str, kind: str) -> dict[str, Any] | None:
        """GET a partner resource; None when it does not exist (404)."""
        headers = _headers(f"Bearer {bearer}")
        async with (
            UpstreamCall(self._metrics, kind) as record,
            self._session.get(
                _join(self._base_url, path), headers=headers, allow_redirects=False
            ) as response,
        ):
            record.status = str(response.status)
            if response.status == 401:
                raise PartnerTokenRejected(f"{kind} answered 401 to the partner token")
            if response.status in {400, 403, 404}:
                return None
            _raise_for_unexpected(response)
            return await _json_object(response)


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
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _raise_for_unexpected(response: aiohttp.ClientResponse) -> None:
    if response.status == 429:
        raise UpstreamRateLimited(
            "upstream answered 429",
            retry_after=retry_after_seconds(response.headers.get(RETRY_AFTER)),
        )
    if response.status >= 500:
        raise ServiceUnavailable(f"upstream answered {response.status}", retry_after=1.0)
    if response.status != 200:
        # Redirects and unexpected statuses are not something a partner call can use.
        raise BadGateway(f"upstream answered {response.status}")


async def _json_object(response: aiohttp.ClientResponse) -> dict[str, Any]:
    raw = await response.content.read(MAX_ANSWER_BYTES + 1)
    if len(raw) > MAX_ANSWER_BYTES:
        raise BadGateway("upstream answer too large")
    body = _loads(raw)
    if not isinstance(body, dict):
        raise BadGateway("upstream answer is not a JSON object")
    return body


def _loads(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise BadGateway("upstream answer is not JSON") from exc
