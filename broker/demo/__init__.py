"""The demo partner site that ``token-broker serve --sandbox`` serves beside the broker.

A page on its own origin mounts the vendor's browser SDK against the broker, and a
small backend endpoint on that origin asks the broker for sessions with the API key,
the way we recommend partners integrate. Imports go one way: this package builds on the
broker's sandbox mode (its seeded data, its ``Companion`` hook) and the broker never
imports it, except the CLI, which hands a ``DemoSite`` to ``serve_with_sandbox``.
"""

from broker.demo.sdk import PINNED_SDK_URL, SdkSource, sdk_source
from broker.demo.site import DEFAULT_PORT, DemoSite

__all__ = ["DEFAULT_PORT", "PINNED_SDK_URL", "DemoSite", "SdkSource", "sdk_source"]
