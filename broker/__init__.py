"""token-broker: a gateway that swaps browser session tokens for upstream checkout JWTs."""

__version__ = "0.1.0"


def compiled() -> bool:
    """True when the request path runs as mypyc-compiled modules (the compiled wheel)."""
    from importlib.util import find_spec  # noqa: PLC0415 - the package import stays bare

    spec = find_spec("broker.proxy.relay")
    return spec is not None and spec.origin is not None and not spec.origin.endswith(".py")
