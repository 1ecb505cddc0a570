"""``[partners.<id>]``: several partner accounts, each checked on its own and together,
secrets from files beside the config, redacted wherever the configuration is shown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from yarl import URL

from broker.config.model import ConfigError, load_settings, redacted_values
from tests.config.test_settings import write_config

BASE = """
[upstream]
base_url = "https://public-api.demo.alternativepayments.io"

[sessions]
signing_key_file = "@KEY@"
"""

TWO = (
    BASE
    + """
[partners.demo]
client_id = "demo-client"
client_secret = "canary-demo-secret"
api_keys = ["demo-api-key-0123456789"]

[partners.prod]
base_url = "https://public-api.alternativepayments.io"
client_id = "prod-client"
client_secret_file = "prod-secret.txt"
secondary_client_id = "prod-client-2"
secondary_client_secret = "canary-prod-secondary"
rate_limit_per_second = 10.0
api_keys_file = "prod-keys.txt"
"""
)


def two_partner_config(tmp_path: Path, body: str = TWO) -> Path:
    (tmp_path / "prod-secret.txt").write_text("canary-prod-secret\n")
    (tmp_path / "prod-keys.txt").write_text("# rotated monthly\nprod-api-key-0123456789\n")
    return write_config(tmp_path, body)


def test_two_partners_load_with_their_own_upstreams_credentials_budgets_and_keys(
    tmp_path: Path,
) -> None:
    settings = load_settings(two_partner_config(tmp_path), {})
    demo, prod = settings.partners
    assert (demo.id, prod.id) == ("demo", "prod")
    # An empty base_url is the [upstream] one; secrets and keys read beside the file.
    assert demo.base_url == URL("https://public-api.demo.alternativepayments.io")
    assert prod.base_url == URL("https://public-api.alternativepayments.io")
    assert prod.client_secret == "canary-prod-secret"
    assert [c.client_id for c in prod.credentials] == ["prod-client", "prod-client-2"]
    assert [c.client_id for c in demo.credentials] == ["demo-client"]
    assert prod.api_keys == ("prod-api-key-0123456789",)
    assert (demo.rate_limit_per_second, prod.rate_limit_per_second) == (5.0, 10.0)
    assert "canary" not in repr(settings)


def test_without_partner_tables_the_single_account_is_default(tmp_path: Path) -> None:
    body = BASE.replace(
        "[sessions]",
        '[sessions]\napi_keys = ["single-api-key-0123456789"]',
    ).replace(
        'alternativepayments.io"',
        'alternativepayments.io"\nclient_id = "cid"\nclient_secret = "canary-s"',
        1,
    )
    settings = load_settings(write_config(tmp_path, body), {})
    (single,) = settings.partners
    assert single.id == "default"
    assert single.client_id == "cid"
    assert single.api_keys == ("single-api-key-0123456789",)
    assert settings.declared_partners == ()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("[partners.prod]", "[partners.Prod]"), "[partners.Prod]: a partner id is 1-32"),
        (('api_keys_file = "prod-keys.txt"', 'api_keys = ["demo-api-key-0123456789"]'),
         "partners.prod.api_keys: a key of partners.demo too"),
        (('api_keys_file = "prod-keys.txt"', ""),
         "partners.prod.api_keys: required"),
        (('api_keys_file = "prod-keys.txt"', 'api_keys = ["short"]'),
         "partners.prod.api_keys: every key must be at least"),
        (('secondary_client_secret = "canary-prod-secondary"', ""),
         "partners.prod.secondary_client_id: give both"),
        (('base_url = "https://public-api.alternativepayments.io"', 'base_url = "http://x"'),
         "partners.prod.base_url: https is required"),
        (("rate_limit_per_second = 10.0", "rate_limit_per_second = 0"),
         "partners.prod.rate_limit_per_second"),
        (('client_id = "demo-client"', 'client_di = "demo-client"'),
         "partners.demo.client_di: unknown key (did you mean partners.demo.client_id?)"),
        (("[sessions]", '[sessions]\napi_keys = ["stray-api-key-0123456789"]'),
         "sessions.api_keys: with [partners.<id>] tables, each partner names its own"),
    ],
)  # fmt: skip
def test_each_partner_problem_is_named_and_no_secret_is_shown(
    tmp_path: Path, change: tuple[str, str], problem: str
) -> None:
    body = TWO.replace(*change)
    assert body != TWO
    with pytest.raises(ConfigError) as error:
        load_settings(two_partner_config(tmp_path, body), {})
    message = str(error.value)
    assert problem in message, message
    assert "canary" not in message


def test_check_config_shows_each_partner_with_its_secrets_redacted(tmp_path: Path) -> None:
    path = two_partner_config(tmp_path)
    effective = redacted_values(path, {})
    assert set(effective["partners"]) == {"demo", "prod"}
    assert effective["partners"]["prod"]["client_id"] == "prod-client"
    assert effective["partners"]["prod"]["client_secret"] == "<redacted>"
    assert effective["partners"]["prod"]["api_keys"] == ["<redacted, 1 set>"]
    shown = subprocess.run(  # noqa: S603 - our own command
        [sys.executable, "-m", "broker", "check-config", str(path)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert json.loads(shown.stdout)["partners"]["demo"]["client_id"] == "demo-client"
    assert "canary" not in shown.stdout + shown.stderr
    assert "api-key-0123456789" not in shown.stdout
