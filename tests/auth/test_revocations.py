"""Revocations refuse older sessions only while those could still be alive."""

from __future__ import annotations

from broker.auth.revocations import Revocations


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_issued_up_to_the_revocation_are_refused_until_they_would_expire() -> None:
    clock = Clock()
    revoked = Revocations(session_ttl=60, clock=clock)
    assert revoked.empty()
    assert not revoked.revoked("cus_1", issued_at=999)
    revoked.revoke("cus_1")
    assert not revoked.empty()
    assert revoked.revoked("cus_1", issued_at=999)
    assert revoked.revoked("cus_1", issued_at=1_000)
    assert not revoked.revoked("cus_1", issued_at=1_000.5)  # issued after: fine
    assert not revoked.revoked("cus_2", issued_at=999)
    clock.now += 59
    assert revoked.revoked("cus_1", issued_at=999)
    clock.now += 1  # every session revoked has expired by now: the entry goes
    assert not revoked.revoked("cus_1", issued_at=999)


def test_a_later_revocation_is_never_undone_by_an_earlier_one() -> None:
    clock = Clock()
    revoked = Revocations(session_ttl=60, clock=clock)
    revoked.revoke("cus_1", before=1_000)
    revoked.revoke("cus_1", before=900)
    assert revoked.revoked("cus_1", issued_at=950)
    assert revoked.revoked("cus_1", issued_at=1_000)


def test_the_table_is_bounded_expired_entries_first() -> None:
    clock = Clock()
    revoked = Revocations(session_ttl=60, clock=clock, max_customers=3)
    revoked.revoke("old")
    clock.now += 61
    for name in ("a", "b", "c"):
        revoked.revoke(name)  # "old" is expired: it goes first
    assert all(revoked.revoked(name, issued_at=clock.now) for name in ("a", "b", "c"))
    revoked.revoke("d")  # full of live ones: the oldest ("a") goes
    assert not revoked.revoked("a", issued_at=clock.now)
    assert all(revoked.revoked(name, issued_at=clock.now) for name in ("b", "c", "d"))


def test_a_lengthened_session_ttl_keeps_revocations_until_the_longer_lifetime() -> None:
    clock = Clock()
    revoked = Revocations(session_ttl=60, clock=clock)
    revoked.lengthen(600)  # a reload: sessions now live 600 s
    revoked.revoke("cus_1")
    clock.now += 61
    assert revoked.revoked("cus_1", issued_at=999)
    clock.now += 539
    assert not revoked.revoked("cus_1", issued_at=999)


def test_a_shortened_session_ttl_never_shortens_revocations() -> None:
    """Sessions issued before the reload keep their own (longer) ``exp``."""
    clock = Clock()
    revoked = Revocations(session_ttl=600, clock=clock)
    revoked.lengthen(60)
    assert revoked.session_ttl == 600
    revoked.revoke("cus_1")
    clock.now += 599
    assert revoked.revoked("cus_1", issued_at=999)
