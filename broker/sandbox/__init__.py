"""The sandbox upstream: a local simulator of the Alternative Payments API.

It serves OAuth, checkout-token minting, the checkout endpoints the browser SDK
calls and the partner GETs, with seeded demo data, plus a ``/_sandbox/`` control
plane for stats, the request log and fault injection. New users try the broker
against it; the broker's tests and benchmarks use it as their upstream.
"""

from broker.sandbox.app import create_sandbox_app
from broker.sandbox.catalog import Catalog
from broker.sandbox.demo_data import seed
from broker.sandbox.settings import SandboxSettings
from broker.sandbox.state import SandboxState, sandbox_state_key

__all__ = [
    "Catalog",
    "SandboxSettings",
    "SandboxState",
    "create_sandbox_app",
    "sandbox_state_key",
    "seed",
]
