"""Tokens at rest: AES-256-GCM, bound to the key name, with key ids for rotation."""

from __future__ import annotations

import os

import pytest

from broker.redis.sealing import KEY_ID_CHARS, SealBroken, Sealer, key_id

NAME = "ns:checkout:cus_1:inv_1"


def test_a_sealed_value_opens_under_its_name_and_hides_the_plaintext() -> None:
    sealer = Sealer((os.urandom(32),))
    blob = sealer.seal(NAME, b"secret-token-value")
    assert b"secret-token-value" not in blob
    assert sealer.open(NAME, blob) == b"secret-token-value"


def test_sealing_twice_gives_different_bytes() -> None:
    sealer = Sealer((os.urandom(32),))
    assert sealer.seal(NAME, b"same") != sealer.seal(NAME, b"same")


@pytest.mark.parametrize("position", [0, 4, 13, 20, -1])
def test_any_flipped_byte_is_refused(position: int) -> None:
    sealer = Sealer((os.urandom(32),))
    blob = bytearray(sealer.seal(NAME, b"token"))
    blob[position] ^= 0x01
    with pytest.raises(SealBroken):
        sealer.open(NAME, bytes(blob))


def test_a_value_moved_to_another_key_is_refused() -> None:
    sealer = Sealer((os.urandom(32),))
    blob = sealer.seal(NAME, b"token")
    with pytest.raises(SealBroken):
        sealer.open("ns:checkout:cus_2:inv_1", blob)


def test_a_value_sealed_by_an_unknown_key_is_refused() -> None:
    blob = Sealer((os.urandom(32),)).seal(NAME, b"token")
    with pytest.raises(SealBroken, match="unknown key"):
        Sealer((os.urandom(32),)).open(NAME, blob)


def test_relabelling_a_value_with_another_key_id_is_refused() -> None:
    old, new = os.urandom(32), os.urandom(32)
    blob = Sealer((old,)).seal(NAME, b"token")
    relabelled = blob.replace(key_id(old).encode(), key_id(new).encode(), 1)
    with pytest.raises(SealBroken):
        Sealer((new, old)).open(NAME, relabelled)


def test_after_rotation_old_values_still_open_and_new_ones_use_the_new_key() -> None:
    old, new = os.urandom(32), os.urandom(32)
    before = Sealer((old,)).seal(NAME, b"old-token")
    rotated = Sealer((new, old))
    assert rotated.open(NAME, before) == b"old-token"
    after = rotated.seal(NAME, b"new-token")
    assert key_id(new).encode() in after[: 4 + KEY_ID_CHARS]
    with pytest.raises(SealBroken):
        Sealer((old,)).open(NAME, after)


def test_garbage_is_refused_not_crashed_on() -> None:
    sealer = Sealer((os.urandom(32),))
    for blob in (b"", b"tb1.", b"plain-token", b"tb1.00000000." + b"x" * 40):
        with pytest.raises(SealBroken):
            sealer.open(NAME, blob)


def test_keys_must_be_32_bytes_and_never_show_in_the_repr() -> None:
    key = os.urandom(32)
    assert key.hex() not in repr(Sealer((key,)))
    with pytest.raises(ValueError, match="32 bytes"):
        Sealer((os.urandom(16),))
    with pytest.raises(ValueError, match="at least one"):
        Sealer(())
