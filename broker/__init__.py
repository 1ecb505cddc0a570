"""token-broker: a gateway that swaps browser session tokens for upstream checkout JWTs."""

__version__ = "0.1.0"
