"""The vendor's real SDK in Debian's Chromium, on the demo site that ``serve --sandbox``
ships, through the broker to the sandbox upstream. Nothing leaves the machine: the SDK
comes from npm (served in place of the CDN), everything else off loopback is refused,
so the Google Fonts icons and the card-field script fail, which a bank account needs
neither of.

Step screenshots and the broker's log: tests/browser/screenshots/ (or
$BROWSER_SCREENSHOTS), printed at the end of the run.
"""

from __future__ import annotations

from typing import Any

import pytest

from broker.demo.directory import Directory
from tests.browser.conftest import SESSION_TTL, OpenPage, Visit
from tests.browser.harness import Broker, wait_until

pytestmark = pytest.mark.browser

# The sandbox's invoice numbers follow its seed; the demo's directory is that seed.
INVOICE_NUMBERS = {
    invoice.id: invoice.number
    for customer in Directory.seeded().customers
    for invoice in customer.invoices
}


def checkout_url(broker: Broker, customer: str, invoice: str, view: str = "flow") -> str:
    return f"{broker.demo_url}/?customer={customer}&invoice={invoice}&view={view}"


def add_bank_account(visit: Visit, holder: str) -> None:
    page = visit.page
    page.get_by_placeholder("Wells Fargo Bank").fill("First Sandbox Bank")
    page.get_by_placeholder("Acme Corp").fill(holder)
    page.get_by_placeholder("Enter account number").fill("000123456789")
    page.get_by_placeholder("123456789").fill("110000000")
    visit.shot("bank-account-form")
    page.get_by_role("button", name="Add bank account").click()
    page.get_by_text("Bank•••• 6789").first.wait_for()


def pay(visit: Visit) -> dict[str, Any]:
    """From a selected bank account to the result screen; the onPaymentSuccess event."""
    page = visit.page
    page.get_by_role("button", name="Pay invoice").click()
    page.get_by_role("button", name="Confirm payment").wait_for()
    visit.shot("confirmation")
    page.get_by_role("button", name="Confirm payment").click()
    page.get_by_text("Processing transaction").wait_for()
    success = visit.wait_for_event("payment_succeeded")
    visit.shot("result")
    return success


def upstream_payments(broker: Broker) -> list[dict[str, Any]]:
    requests: list[dict[str, Any]] = broker.sandbox("/_sandbox/requests?limit=1000")
    return [r for r in requests if r["method"] == "POST" and r["raw_path"] == "/checkout/payments"]


def header(recorded: dict[str, Any], name: str) -> str | None:
    values = [value for key, value in recorded["headers"] if key.lower() == name.lower()]
    return values[0] if values else None


def assert_no_token_leaked(visit: Visit, broker: Broker) -> None:
    """Session tokens live in the browser only: not in the broker's log, not upstream."""
    upstream = broker.sandbox("/_sandbox/requests?limit=1000")
    seen_upstream = " ".join(str(entry["headers"]) + entry["body"] for entry in upstream)
    log = broker.log_text()
    assert visit.session_tokens
    for token in visit.session_tokens:
        assert token not in log
        assert token not in seen_upstream


def assert_each_401_renewed_once(visit: Visit) -> int:
    """onAccessTokenExpired ran exactly once per call the broker answered 401, and each
    such call was retried (with the new token) and succeeded."""
    refused = visit.broker_calls(401)
    assert len(visit.events("token_expired")) == len(refused), (refused, visit.events())
    assert len(visit.events("token_renewed")) == len(refused)
    for method, url, _ in refused:
        retried = [c for c in visit.broker_calls() if c[:2] == (method, url) and c[2] < 300]
        assert retried, f"{method} {url} was never retried successfully"
    return len(refused)


def test_full_payment_flow_with_a_new_bank_account(open_page: OpenPage, broker: Broker) -> None:
    before = len(upstream_payments(broker))
    visit = open_page(checkout_url(broker, "cus_alice", "inv_alice_1"), "a")
    page = visit.page
    page.get_by_text(f"Invoice {INVOICE_NUMBERS['inv_alice_1']}").wait_for()
    page.get_by_text("Card•••• 4242").wait_for()  # Alice's saved card, the default
    visit.shot("invoice-and-saved-card")
    assert visit.network.sdk_served == 1

    page.get_by_role("button", name="Change").click()
    page.get_by_role("button", name="Bank account").click()
    page.get_by_role("button", name="Add new bank account").click()
    add_bank_account(visit, "Alice Johnson")
    success = pay(visit)

    payments = upstream_payments(broker)
    assert len(payments) == before + 1
    key = header(payments[-1], "Idempotency-Key")
    # The SDK names the payment after its idempotency key; the upstream got that key.
    assert key is not None
    assert key == success["data"]["paymentId"]
    assert key.startswith("payment-inv_alice_1-")
    assert_each_401_renewed_once(visit)
    assert_no_token_leaked(visit, broker)
    assert not visit.events("payment_failed")
    assert all("googleapis" in url or "evervault" in url for url in visit.network.blocked)


# Slow: it waits out a session (SESSION_TTL). Fast, the broker's side of it: an expired
# session is a 401 invalid_token (tests/auth/test_sessions.py) and the demo backend hands
# out a fresh one (tests/demo/test_demo.py).
@pytest.mark.slow
def test_a_session_expiring_mid_flow_is_renewed_and_the_payment_goes_through(
    open_page: OpenPage, broker: Broker
) -> None:
    before = len(upstream_payments(broker))
    # Carol has no saved method: the flow opens the bank-account form at once.
    visit = open_page(checkout_url(broker, "cus_carol", "inv_carol_1"), "b")
    page = visit.page
    page.get_by_placeholder("Wells Fargo Bank").wait_for()
    assert len(visit.events("session_fetched")) == 1
    visit.shot("bank-form")
    # Let the session run out while the visitor is typing (the page counts it down).
    wait_until(
        lambda: "expired" in page.inner_text("#session-expiry"),
        page,
        within=SESSION_TTL + 5,
        what="the session to expire",
    )
    visit.shot("session-expired")
    assert not visit.broker_calls(401)

    add_bank_account(visit, "Carol Nguyen")  # its POST meets the expired session
    renewals = assert_each_401_renewed_once(visit)
    assert renewals >= 1
    assert "POST" in {method for method, _, _ in visit.broker_calls(401)}
    visit.shot("renewed")

    success = pay(visit)
    payments = upstream_payments(broker)
    assert len(payments) == before + 1
    assert header(payments[-1], "Idempotency-Key") == success["data"]["paymentId"]
    assert_each_401_renewed_once(visit)  # again: the payment may have met another expiry
    assert page.inner_text("#session-renewals") == str(len(visit.events("token_expired")))
    assert_no_token_leaked(visit, broker)


def test_the_individual_components_render_the_invoice(open_page: OpenPage, broker: Broker) -> None:
    visit = open_page(checkout_url(broker, "cus_alice", "inv_alice_2", view="components"), "c")
    page = visit.page
    detail, methods = page.locator("#invoice-detail"), page.locator("#payment-methods")
    detail.get_by_text(f"Invoice {INVOICE_NUMBERS['inv_alice_2']}").wait_for()
    detail.get_by_text("$1,274.99").first.wait_for()  # 899.99 + 3 x 125.00
    methods.get_by_text("Card•••• 4242").wait_for()
    visit.wait_for_event("components_mounted")
    visit.shot("components")
    assert page.locator("#stage-flow").is_hidden()
    assert not visit.broker_calls(401)
    statuses = {url.rsplit("/checkout", 1)[1]: status for _, url, status in visit.broker_calls()}
    assert statuses["/invoice"] == 200
    assert statuses["/payment-methods"] == 200


# Slow: it waits out the SDK's retries (1, 2, 4 s). Fast, the broker's side of it: a
# preflight from an origin not allowed is a 403 without CORS headers
# (tests/security/test_cors.py), logged with the origin (tests/demo/test_demo.py).
@pytest.mark.slow
def test_a_page_from_an_origin_not_allowed_gets_no_data(
    open_page: OpenPage, broker: Broker
) -> None:
    # The same demo site under another name is another origin, one the broker was not
    # told about: what a partner sees before adding their origin.
    origin = f"http://localhost:{broker.demo_port}"
    visit = open_page(f"{origin}/?customer=cus_alice&invoice=inv_alice_1", "d")
    page = visit.page
    page.locator("#origin-warning").wait_for()
    # The partner backend still works (same origin as the page); the broker does not.
    visit.wait_for_event("session_fetched")

    def refused_paths() -> set[str]:
        events = broker.log_events()
        refused = {
            e["request_id"]
            for e in events
            if e.get("event") == "cors_origin_refused" and e.get("origin") == origin
        }
        return {
            e["path"]
            for e in events
            if e.get("event") == "request_finished"
            and e.get("request_id") in refused
            and e.get("method") == "OPTIONS"
            and e.get("status") == 403
        }

    # The SDK retries a failed call (1, 2, 4 s) before it gives up on the theme and
    # goes on to the invoice, which is refused the same way.
    wait_until(
        lambda: "/checkout/invoice" in refused_paths(), page, within=20, what="a refused preflight"
    )
    page.wait_for_timeout(500)
    visit.shot("origin-not-allowed")
    assert "/checkout/preferences/theme" in refused_paths()
    assert not visit.broker_calls(), "a response from the broker reached the page"
    assert any(url.startswith(f"{broker.url}/checkout/") for _, url in visit.failed)
    assert any("blocked by CORS policy" in line for line in visit.console)
    widget = page.inner_text("#checkout")
    assert INVOICE_NUMBERS["inv_alice_1"] not in widget
    assert "$" not in widget
    # The same preflight from the allowed origin passes: the refusal is about the origin.
    assert broker.preflight(origin) == 403
    assert broker.preflight(broker.demo_url) == 204
    assert_no_token_leaked(visit, broker)


def test_the_readme_page_works_as_written(
    open_page: OpenPage, broker: Broker, example: str
) -> None:
    """examples/page.html (the README's "In the page") served by examples/
    partner_backend.py on an origin given to the broker with --cors-origin."""
    visit = open_page(f"{example}/", "e")
    page = visit.page
    page.get_by_text(f"Invoice {INVOICE_NUMBERS['inv_alice_1']}").wait_for()
    page.get_by_text("Card•••• 4242").wait_for()
    visit.shot("example-page")
    assert visit.network.sdk_served == 1
    assert visit.session_tokens  # from the example's backend, on the page's origin
    assert not [call for call in visit.broker_calls() if call[2] >= 400]
