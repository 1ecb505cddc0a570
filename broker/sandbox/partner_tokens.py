"""PartnerCredentials: the client-credentials check and the opaque OAuth tokens it issues."""

from __future__ import annotations

import hmac
import secrets

from broker.sandbox.authorization import basic_credentials, bearer_token


class PartnerCredentials:
    """One partner's client_id/secret, and the bearer tokens handed out for them.

    Times are ``time.monotonic()`` values passed in by the caller, so expiry is
    immune to wall-clock steps and can be tested without sleeping.
    """

    def __init__(self, *, client_id: str, client_secret: str, ttl: float) -> None:
        self._client_id = client_id.encode()
        self._client_secret = client_secret.encode()
        self._ttl = ttl
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (client_id, expiry)

    def authenticate(self, authorization: str | None) -> str | None:
        """The client_id a Basic header proves, or None."""
        credentials = basic_credentials(authorization)
        if credentials is None:
            return None
        user, password = credentials
        # Both comparisons always run, so timing reveals neither which part was wrong
        # nor how much of the secret matched.
        user_ok = hmac.compare_digest(user.encode(), self._client_id)
        secret_ok = hmac.compare_digest(password.encode(), self._client_secret)
        return user if user_ok & secret_ok else None

    def issue(self, client_id: str, now: float) -> str:
        # Expired tokens are dropped here, so the table stays as small as the
        # number of live tokens without a background sweeper.
        self._tokens = {token: entry for token, entry in self._tokens.items() if entry[1] > now}
        token = secrets.token_hex(28)  # 56 lowercase hex chars, like the vendor's
        self._tokens[token] = (client_id, now + self._ttl)
        return token

    def holder(self, authorization: str | None, now: float) -> str | None:
        """The client_id behind a live Bearer token, or None."""
        token = bearer_token(authorization)
        entry = self._tokens.get(token) if token is not None else None
        if entry is None or entry[1] <= now:
            return None
        return entry[0]
