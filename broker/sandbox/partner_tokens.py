"""PartnerCredentials: the client-credentials check and the opaque OAuth tokens it issues."""

from __future__ import annotations

import hmac
import secrets

from broker.sandbox.authorization import basic_credentials, bearer_token


class PartnerCredentials:
    """One partner's OAuth clients (client_id -> secret), and the bearer tokens handed
    out for them. A partner may hold several clients at once, as the vendor lets one
    "update with a new key before revoking the old one" (``set_client``/``remove_client``).

    Times are ``time.monotonic()`` values passed in by the caller, so expiry is
    immune to wall-clock steps and can be tested without sleeping.
    """

    def __init__(self, *, client_id: str, client_secret: str, ttl: float) -> None:
        self._clients: dict[str, bytes] = {client_id: client_secret.encode()}
        # Every client ever registered: checkout JWTs it minted stay this partner's.
        self.known_clients: set[str] = {client_id}
        self._ttl = ttl
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (client_id, expiry)

    @property
    def client_ids(self) -> list[str]:
        return sorted(self._clients)

    def set_client(self, client_id: str, client_secret: str) -> None:
        """Add a client, or give one a new secret (the old one stops working at once)."""
        self._clients[client_id] = client_secret.encode()
        self.known_clients.add(client_id)

    def remove_client(self, client_id: str) -> bool:
        """Revoke a client: its secret and the bearer tokens issued to it stop working."""
        if self._clients.pop(client_id, None) is None:
            return False
        self._tokens = {t: entry for t, entry in self._tokens.items() if entry[0] != client_id}
        return True

    def authenticate(self, authorization: str | None) -> str | None:
        """The client_id a Basic header proves, or None."""
        credentials = basic_credentials(authorization)
        if credentials is None:
            return None
        user, password = credentials
        secret = self._clients.get(user)
        # The secret comparison always runs, so timing reveals neither whether the
        # client exists nor how much of the secret matched.
        expected = secret if secret is not None else secrets.token_bytes(32)
        secret_ok = hmac.compare_digest(password.encode(), expected)
        return user if secret is not None and secret_ok else None

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
