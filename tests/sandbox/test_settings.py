"""SandboxSettings: defaults that work out of the box, secrets kept out of repr."""

from __future__ import annotations

import pytest

from broker.sandbox import SandboxSettings


def test_defaults_are_the_demo_credentials_with_a_fresh_signing_secret() -> None:
    first, second = SandboxSettings(), SandboxSettings()

    assert (first.client_id, first.client_secret) == ("sandbox-client", "sandbox-secret")
    assert len(first.signing_secret) == 32
    assert first.signing_secret != second.signing_secret


def test_repr_hides_the_secrets() -> None:
    settings = SandboxSettings(client_secret="hunter2-secret", signing_secret=b"S" * 32)

    assert "hunter2" not in repr(settings)
    assert "SSSS" not in repr(settings)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"token_ttl": 0}, "token_ttl"),
        ({"oauth_ttl": -1}, "oauth_ttl"),
        ({"rate_limit_per_second": 0.5}, "rate_limit_per_second"),
        ({"signing_secret": b"short"}, "signing_secret"),
        ({"client_id": ""}, "client_id"),
    ],
)
def test_nonsense_settings_are_refused(overrides: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        SandboxSettings(**overrides)  # type: ignore[arg-type]
