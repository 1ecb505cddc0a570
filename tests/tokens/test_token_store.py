"""Per-key state: the token store, the refresh schedule, rate-limit buckets and the
verified-session cache stay bounded and cheap per key."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from broker.auth.sessions import SessionAuthority
from broker.bounded import Memo
from broker.config.model import SessionSettings
from broker.credentials import CheckoutToken, TokenKey, token_key
from broker.errors import TooManyRequests
from broker.proxy import throttle
from broker.proxy.throttle import TokenBuckets
from broker.tokens.schedule import GRANULARITY, RefreshSchedule
from broker.tokens.store import MemoryTokenStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def token(now: float, lifetime: float) -> CheckoutToken:
    return CheckoutToken.create("jwt", expires_at=now + lifetime, now=now, refresh_margin=1)


def key(n: int) -> TokenKey:
    return token_key(f"cus_{n}", f"inv_{n}")


def test_past_the_bound_expired_entries_go_first_then_the_oldest() -> None:
    clock = Clock()
    store = MemoryTokenStore(max_entries=128, clock=clock)  # slack: 2
    store.put(key(0), token(clock.now, lifetime=5))  # expires first
    for n in range(1, 128):
        store.put(key(n), token(clock.now, lifetime=100))
    assert len(store) == 128
    clock.now += 10
    store.put(key(128), token(clock.now, lifetime=100))  # over the bound
    assert store.get(key(0)) is None  # expired: dropped before any live one
    assert len(store) == 126  # then the oldest live ones, down to the slack
    assert store.get(key(1)) is None
    assert store.get(key(2)) is None
    assert store.get(key(3)) is not None
    assert store.get(key(128)) is not None


def test_a_replaced_key_counts_as_new() -> None:
    clock = Clock()
    store = MemoryTokenStore(max_entries=64, clock=clock)  # slack: 1
    for n in range(64):
        store.put(key(n), token(clock.now, lifetime=100))
    store.put(key(0), token(clock.now, lifetime=100))  # renewed: now the newest
    store.put(key(64), token(clock.now, lifetime=100))
    assert store.get(key(0)) is not None
    assert store.get(key(1)) is None


def test_the_schedule_is_never_early_and_at_most_one_granule_late() -> None:
    schedule: RefreshSchedule[str] = RefreshSchedule()
    times = [0.3, 0.1, 10.05, 0.3 + 1e-12, 7.0, 0.125]
    earliest = [schedule.add(when, f"k{i}") for i, when in enumerate(times)]
    assert earliest == [True, True, False, False, False, False]
    assert len(schedule) == len(times)
    popped: list[str] = []
    now = 0.0
    while (due := schedule.next_due()) is not None:
        assert due >= now
        now = due
        for name in schedule.pop_due(now):
            when = times[int(name[1:])]
            assert when <= now < when + GRANULARITY
            popped.append(name)
    assert popped == ["k1", "k5", "k0", "k3", "k4", "k2"]
    assert len(schedule) == 0
    assert schedule.pop_due(1e9) == []


def test_rate_limit_buckets_forget_idle_keys_and_stay_bounded() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1.0, burst=2, clock=clock, max_keys=128)
    buckets.take("busy")
    buckets.take("busy")
    with pytest.raises(TooManyRequests):
        buckets.take("busy")
    for n in range(200):  # more keys than the bound: the oldest are forgotten
        buckets.take(f"ip-{n}")
    assert len(buckets._arrival) <= 128
    clock.now += throttle.FORGET_IDLE_EVERY
    buckets.take("late")  # every other bucket is full again: all forgotten
    assert list(buckets._arrival) == ["late"]
    buckets.take("late")
    with pytest.raises(TooManyRequests):
        buckets.take("late")  # forgetting others never resets a busy key


def test_the_verified_session_cache_is_bounded() -> None:
    authority = SessionAuthority(
        SessionSettings(signing_key=ec.generate_private_key(ec.SECP256R1())), max_verified=64
    )
    tokens = [
        authority.issue(key(n), partner="default", client_id="client").token for n in range(100)
    ]
    for token_ in tokens:
        assert authority.verify(token_).key == key(tokens.index(token_))
    assert len(authority._verified) <= 64
    assert authority.verify(tokens[0]).key == key(0)  # evicted ones verify again


def test_a_one_entry_store_keeps_the_newest() -> None:
    clock = Clock()
    store = MemoryTokenStore(max_entries=1, clock=clock)
    first, second = token(clock.now, lifetime=100), token(clock.now, lifetime=100)
    store.put(key(1), first)
    store.put(key(2), second)
    assert store.get(key(1)) is None
    assert store.get(key(2)) is second


def test_memo_remembers_its_first_keys_only_and_never_an_exception() -> None:
    calls: list[str] = []

    def judge(name: str) -> str:
        calls.append(name)
        if name == "bad":
            raise ValueError(name)
        return name.lower()

    memo = Memo(judge, 2)
    assert [memo("A"), memo("B"), memo("A"), memo("B")] == ["a", "b", "a", "b"]
    assert calls == ["A", "B"]  # each judged once
    assert [memo("C"), memo("C")] == ["c", "c"]
    assert calls == ["A", "B", "C", "C"]  # past the bound: judged every time, never kept
    for _ in range(2):
        with pytest.raises(ValueError, match="bad"):
            memo("bad")
    assert calls[-2:] == ["bad", "bad"]


def test_memo_remembers_only_the_keys_it_may_keep() -> None:
    calls: list[str] = []

    def judge(name: str) -> str:
        calls.append(name)
        return name.lower()

    memo = Memo(judge, 10, keep=lambda name: len(name) <= 3)
    assert [memo("Abc"), memo("Abc"), memo("Long"), memo("Long")] == ["abc", "abc", "long", "long"]
    assert calls == ["Abc", "Long", "Long"]  # the long key judged every time, never kept
