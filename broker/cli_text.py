"""The quick start that ``serve --sandbox`` prints: URLs and copy-paste commands."""

from __future__ import annotations

from broker.settings import Settings


def quick_start(settings: Settings, *, broker_url: str, sandbox_port: int) -> str:
    api_key = settings.sessions.api_keys[0]
    return f"""
token-broker is running on the embedded sandbox (demo credentials, nothing real).

  broker    {broker_url}
  upstream  http://127.0.0.1:{sandbox_port}  (sandbox; stats at /_sandbox/stats)
  metrics   {broker_url}/metrics     health {broker_url}/healthz  {broker_url}/readyz

Quick start (copy and paste):

  # 1. your backend asks the broker for a session token (demo API key):
  TOKEN=$(curl -s -X POST {broker_url}/v1/checkout-auth/init \\
    -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' \\
    -d '{{"customer_id": "cus_alice", "invoice_id": "inv_alice_1"}}' \\
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

  # 2. the browser SDK calls the broker with it; the broker swaps in a checkout JWT:
  curl -s {broker_url}/checkout/invoice -H "Authorization: Bearer $TOKEN"

In the page:
  AlternativeClient.create({{ accessToken: TOKEN, baseUrl: "{broker_url}",
    onAccessTokenExpired: () => fetch("/your-backend/checkout-session")
      .then(r => r.json()).then(b => b.token) }})
Stop with Ctrl-C.
"""
