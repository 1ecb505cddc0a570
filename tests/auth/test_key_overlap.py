"""A signing key a reload took out keeps verifying, and stays in the JWKS, for the
overlap it was given (the longest a session it signed can live), and not a second more."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from broker.auth.sessions import AuthFailure, SessionAuthority, key_id
from broker.config.model import SessionSettings
from broker.credentials import token_key

KEY = token_key("cus_alice", "inv_alice_1")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def kids(authority: SessionAuthority) -> set[str]:
    return {key["kid"] for key in authority.jwks()["keys"]}


def test_a_retired_signing_key_verifies_for_its_overlap_then_never() -> None:
    clock = Clock(time.time())
    old_key, new_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    before = SessionSettings(api_keys=("k" * 20,), signing_key=old_key, ttl=600, leeway=0)
    old = SessionAuthority(before, clock=clock)
    signed_before = old.issue(KEY, partner="default", client_id="c").token
    # The reload: the new authority verifies what the old one did until now + ttl.
    after = SessionSettings(api_keys=("k" * 20,), signing_key=new_key, ttl=600, leeway=0)
    new = SessionAuthority(after, clock=clock, retired=old.retiring(clock.now + 600))
    old_kid, new_kid = key_id(old_key.public_key()), key_id(new_key.public_key())
    assert kids(new) == {old_kid, new_kid}
    assert new.verify(signed_before).key == KEY
    signed_after = new.issue(KEY, partner="default", client_id="c").token
    assert new.verify(signed_after).key == KEY
    # Past the overlap: the old key is gone from the JWKS and verifies nothing, even a
    # token whose own exp would still allow it (or one cached as verified).
    clock.now += 600
    assert kids(new) == {new_kid}
    fresh = SessionAuthority(before, clock=clock).issue(KEY, partner="default", client_id="c")
    with pytest.raises(AuthFailure) as refused:
        new.verify(fresh.token)
    assert refused.value.reason == "unknown_key"


def test_a_second_rotation_keeps_the_longest_overlap_of_each_key() -> None:
    clock = Clock(time.time())
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
    settings = [SessionSettings(api_keys=("k" * 20,), signing_key=k, ttl=600) for k in keys]
    first = SessionAuthority(settings[0], clock=clock)
    second = SessionAuthority(settings[1], clock=clock, retired=first.retiring(clock.now + 600))
    clock.now += 100
    third = SessionAuthority(settings[2], clock=clock, retired=second.retiring(clock.now + 600))
    assert kids(third) == {key_id(k.public_key()) for k in keys}
    clock.now += 550  # the first key's overlap (from the first reload) is over
    assert kids(third) == {key_id(k.public_key()) for k in keys[1:]}
    clock.now += 100
    assert kids(third) == {key_id(keys[2].public_key())}
