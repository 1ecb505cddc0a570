"""A token key is one string, "customer_id/invoice_id": it must name one pair only."""

from __future__ import annotations

import pytest

from broker.credentials import customer_of, key_ids, token_key
from broker.tokens.store import MemoryTokenStore
from tests.tokens.test_token_store import Clock, token


def test_a_key_splits_back_into_its_ids() -> None:
    key = token_key("cus_alice", "inv_alice_1")
    assert key == "cus_alice/inv_alice_1"  # what str() of the old (customer, invoice) gave
    assert key_ids(key) == ("cus_alice", "inv_alice_1")
    assert customer_of(key) == "cus_alice"


def test_no_two_pairs_share_a_key() -> None:
    ids = ["cus_1", "cus_10", "1", "10", "inv_1", "inv_10", "0", "1_0", "1-0", "a", "a-", "-a"]
    keys = {token_key(c, i): (c, i) for c in ids for i in ids}
    assert len(keys) == len(ids) ** 2  # injective
    for key, pair in keys.items():
        assert key_ids(key) == pair


@pytest.mark.parametrize(
    ("customer_id", "invoice_id"), [("cus_1/inv", "1"), ("cus_1", "inv/1"), ("/", "x"), ("x", "/")]
)
def test_an_id_with_the_separator_is_refused(customer_id: str, invoice_id: str) -> None:
    # "cus_1/inv" + "1" and "cus_1" + "inv/1" would both be "cus_1/inv/1".
    with pytest.raises(ValueError, match="must not contain '/'"):
        token_key(customer_id, invoice_id)


def test_the_customer_of_a_key_is_never_a_prefix_of_another_customer() -> None:
    assert customer_of(token_key("cus_10", "inv_1")) == "cus_10"
    assert customer_of(token_key("cus_1", "0_inv")) == "cus_1"
    clock = Clock()
    store = MemoryTokenStore(max_entries=64, clock=clock)
    keys = [token_key(c, i) for c in ("cus_1", "cus_10", "cus_1_") for i in ("inv_1", "0")]
    for key in keys:
        store.put(key, token(clock.now, lifetime=100))
    assert store.keys_of_customer("cus_1") == [token_key("cus_1", "inv_1"), token_key("cus_1", "0")]
    assert store.keys_of_customer("cus_10") == [
        token_key("cus_10", "inv_1"),
        token_key("cus_10", "0"),
    ]
    assert store.keys_of_customer("cus") == []
