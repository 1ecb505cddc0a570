"""The quick start that ``serve --sandbox`` prints: URLs and copy-paste commands."""

from __future__ import annotations

from broker.config.model import Settings


def quick_start(
    settings: Settings, *, broker_url: str, sandbox_port: int, demo_url: str | None = None
) -> str:
    api_key = settings.sessions.api_keys[0]
    metrics = (
        f"curl -H 'Authorization: Bearer {settings.metrics_bearer_token}' {broker_url}/metrics"
    )
    origins = ", ".join(settings.cors.allowed_origins) or "none"
    # The demo site first: opening one URL is the quickest way to see the product work.
    demo = (
        f"  demo site {demo_url}/   <- open this: a partner page paying an invoice\n"
        if demo_url
        else ""
    )
    return f"""
token-broker is running on the embedded sandbox (demo credentials, nothing real).

{demo}  broker    {broker_url}  (browsers allowed from: {origins})
  upstream  http://127.0.0.1:{sandbox_port}  (sandbox; stats at /_sandbox/stats)
  health    {broker_url}/healthz  {broker_url}/readyz
  metrics   {metrics}

Your own page on another origin: restart with --cors-origin ORIGIN (repeatable), e.g.
  token-broker serve --sandbox --cors-origin http://localhost:3000
otherwise the broker refuses its preflights (403) and the SDK's widget stays empty.

Quick start (copy and paste):

  # 1. your backend asks the broker for a session token (demo API key):
  TOKEN=$(curl -s -X POST {broker_url}/v1/checkout-auth/init \\
    -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' \\
    -d '{{"customer_id": "cus_alice", "invoice_id": "inv_alice_1"}}' \\
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

  # 2. the browser SDK calls the broker with it; the broker swaps in a checkout JWT:
  curl -s {broker_url}/checkout/invoice -H "Authorization: Bearer $TOKEN"

In the page (the README's "In the page", and examples/ in the repository):
  const client = await AlternativeClient.create({{ accessToken: TOKEN,
    baseUrl: "{broker_url}", onAccessTokenExpired: getSession }});
  client.createPaymentFlow({{ containerId: "checkout", invoiceId: "inv_alice_1" }}).mount();
Stop with Ctrl-C.
"""
