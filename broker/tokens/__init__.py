"""The token tiers: the partner OAuth token and the per-(customer, invoice) checkout
JWTs, their cache, renewal schedule, mint coordination seam and the vendor's rate budget."""

from broker.tokens.budget import WINDOW, RateBudget, SlidingWindowBudget
from broker.tokens.checkout import CheckoutTokens, Lookup
from broker.tokens.coordination import MintHere
from broker.tokens.partner import REFRESH_MARGIN, PartnerToken
from broker.tokens.store import MemoryTokenStore, TokenStore

__all__ = [
    "REFRESH_MARGIN",
    "WINDOW",
    "CheckoutTokens",
    "Lookup",
    "MemoryTokenStore",
    "MintHere",
    "PartnerToken",
    "RateBudget",
    "SlidingWindowBudget",
    "TokenStore",
]
