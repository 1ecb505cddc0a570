"""``bounded.memo``: the one bounded memo of the request path, whichever build runs."""

from __future__ import annotations

import pytest

from broker import compiled
from broker.bounded import Memo, memo


def test_memo_is_the_compiled_memo_only_on_the_compiled_build() -> None:
    assert isinstance(memo(str.lower, 4), Memo) == compiled()


def test_memo_answers_as_computed_and_judges_a_repeated_key_once() -> None:
    calls: list[str] = []

    def judge(name: str) -> str:
        calls.append(name)
        return name.lower()

    remembered = memo(judge, 8)
    assert [remembered(n) for n in ["A", "B", "A", "B", "A"]] == ["a", "b", "a", "b", "a"]
    assert calls == ["A", "B"]


def test_memo_never_remembers_an_exception() -> None:
    calls: list[str] = []

    def judge(name: str) -> str:
        calls.append(name)
        raise ValueError(name)

    remembered = memo(judge, 8)
    for _ in range(3):
        with pytest.raises(ValueError, match="bad"):
            remembered("bad")
    assert calls == ["bad"] * 3


def test_memo_remembers_only_the_keys_it_may_keep() -> None:
    calls: list[str] = []

    def judge(name: str) -> str:
        calls.append(name)
        return name.lower()

    remembered = memo(judge, 8, keep=lambda name: len(name) <= 3)
    assert [remembered(n) for n in ["Abc", "Abc", "Long", "Long"]] == ["abc", "abc", "long", "long"]
    assert calls == ["Abc", "Long", "Long"]


def test_memo_stays_bounded_and_right_past_its_bound() -> None:
    calls: list[str] = []

    def judge(name: str) -> str:
        calls.append(name)
        return name.lower()

    remembered = memo(judge, 4)
    names = [f"K{n}" for n in range(100)]
    assert [remembered(n) for n in names * 2] == [n.lower() for n in names * 2]
    # Whatever it keeps (the first keys, or the latest), it keeps at most 4 of 100.
    assert len(calls) >= 200 - 4
