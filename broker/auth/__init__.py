"""Who is asking: broker session tokens, browser-direct IdP identities, invoice
ownership, and revocations."""

from broker.auth.identity import IdentityVerifier
from broker.auth.ownership import Ownership
from broker.auth.revocations import Revocations
from broker.auth.sessions import ApiKeys, AuthFailure, Retired, Session, SessionAuthority, key_id

__all__ = [
    "ApiKeys",
    "AuthFailure",
    "IdentityVerifier",
    "Ownership",
    "Retired",
    "Revocations",
    "Session",
    "SessionAuthority",
    "key_id",
]
