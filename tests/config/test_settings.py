"""Configuration: file, environment and secret files; every problem at once; no leaks."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives import serialization

from broker.config.model import (
    PARTNER_SCHEMA,
    SCHEMA,
    AdminSettings,
    CacheSettings,
    ConfigError,
    CorsSettings,
    JwtAuthSettings,
    LimitSettings,
    RouteSettings,
    ServerSettings,
    Settings,
    TokenSettings,
    load_settings,
    redacted_values,
)
from broker.config.schema import schema, setting
from broker.config.sources import Key
from tests.helpers import signing_key

REPO = Path(__file__).resolve().parents[2]


def pem() -> str:
    return (
        signing_key()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


def write_config(tmp_path: Path, body: str) -> Path:
    key_file = tmp_path / "signing.pem"
    key_file.write_text(pem())
    path = tmp_path / "broker.toml"
    path.write_text(body.replace("@KEY@", str(key_file)))
    return path


GOOD = """
[upstream]
base_url = "https://public-api.demo.alternativepayments.io"
client_id = "cid"
client_secret = "canary-client-secret-value"

[sessions]
api_keys = ["canary-api-key-0123456789"]
signing_key_file = "@KEY@"
"""


def test_documented_defaults_file_matches_the_schema(tmp_path: Path) -> None:
    """config/broker.toml lists every key; it only lacks the required secrets."""
    with pytest.raises(ConfigError) as caught:
        load_settings(REPO / "config" / "broker.toml", {})
    assert set(caught.value.problems) == {
        "upstream.client_id: required",
        "upstream.client_secret: required",
        "sessions.signing_key: required (set signing_key_file; `token-broker keygen`)",
        "sessions.api_keys: required (set sessions.api_keys or api_keys_file)",
    }


def test_good_config_loads(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, GOOD), {})
    assert settings.upstream.client_id == "cid"
    assert settings.upstream.base_url.host == "public-api.demo.alternativepayments.io"
    assert settings.upstream.rate_limit_per_second == 5.0
    assert settings.tokens.refresh_margin == 60.0
    assert "canary" not in repr(settings)


def test_environment_overrides_and_secret_files(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file-secret\n")
    keys_file = tmp_path / "keys"
    keys_file.write_text("# partner backends\nkey-one-0123456789abc\n\nkey-two-0123456789abc\n")
    environ = {
        "BROKER_UPSTREAM_CLIENT_SECRET_FILE": str(secret_file),
        "BROKER_SESSIONS_API_KEYS_FILE": str(keys_file),
        "BROKER_SERVER_PORT": "9090",
        "BROKER_UPSTREAM_PROXY_PREFIXES": "/checkout/,/other/",
        "BROKER_UPSTREAM_ALLOW_INSECURE_HTTP": "true",
        "BROKER_UPSTREAM_BASE_URL": "http://127.0.0.1:8081",
    }
    settings = load_settings(write_config(tmp_path, GOOD), environ)
    assert settings.upstream.client_secret == "from-file-secret"
    assert settings.sessions.api_keys == ("key-one-0123456789abc", "key-two-0123456789abc")
    assert settings.server.port == 9090
    assert settings.upstream.proxy_prefixes == ("/checkout/", "/other/")


def test_http_upstream_needs_explicit_permission(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="https is required"):
        load_settings(
            write_config(tmp_path, GOOD), {"BROKER_UPSTREAM_BASE_URL": "http://example.com"}
        )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    body = """
[server]
port = "eighty"
[upstream]
base_url = "ftp://nowhere"
client_id = ""
client_secret = "canary-client-secret-value"
rate_limit_per_second = -1
proxy_prefixes = ["checkout"]
typo_key = 1
[sessions]
api_keys = ["short"]
signing_key_file = "/nonexistent/key.pem"
[logging]
format = "xml"
"""
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(tmp_path, body), {})
    problems = caught.value.problems
    # Type errors come first (the semantic checks need well-typed values).
    assert any("server.port" in p for p in problems)
    assert any("upstream.typo_key: unknown key" in p for p in problems)
    assert any("signing_key_file" in p for p in problems)
    assert "canary" not in str(caught.value)

    body_typed = body.replace('port = "eighty"', "port = 80").replace("typo_key = 1\n", "")
    body_typed = body_typed.replace(
        'signing_key_file = "/nonexistent/key.pem"', 'signing_key_file = "@KEY@"'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(tmp_path, body_typed), {})
    message = str(caught.value)
    for expected in (
        "upstream.base_url",
        "upstream.client_id: required",
        "upstream.rate_limit_per_second",
        "upstream.proxy_prefixes",
        "sessions.api_keys",
        "logging.format",
    ):
        assert expected in message
    assert "canary" not in message


def test_redacted_values_hide_every_secret(tmp_path: Path) -> None:
    effective = redacted_values(write_config(tmp_path, GOOD), {})
    text = str(effective)
    assert "canary" not in text
    assert "BEGIN" not in text
    assert effective["upstream"]["client_secret"] == "<redacted>"
    assert effective["upstream"]["client_id"] == "cid"


def readme_table() -> list[list[str]]:
    """The rows of the README's configuration table, cell by cell."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return [
        [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        for line in section.splitlines()
        if line.startswith("| `")
    ]


def shown_default(key: Key) -> str:
    """The README's "default" cell for *key*: "(required...)" when there is none."""
    if key.required and not key.default:
        condition = "" if key.required is True else f" {key.required}"
        return f"(required{condition}{', secret' if key.secret else ''})"
    if isinstance(key.default, bool):
        return f"`{str(key.default).lower()}`"
    if isinstance(key.default, list):
        return f"`{json.dumps(key.default)}`"
    return f"`{key.default}`" if key.default != "" else '`""`'


def test_the_readme_table_documents_every_declared_key_as_declared() -> None:
    rows = readme_table()
    assert all(len(row) == 4 for row in rows), [row for row in rows if len(row) != 4]
    # Every declared key once, and no other; a partner's keys have no variable.
    keys = (*SCHEMA, *PARTNER_SCHEMA)
    assert sorted(row[0] for row in rows) == sorted(f"`{key.dotted}`" for key in keys)
    declared = {f"`{key.dotted}`": key for key in keys}
    for name, env, default, meaning in rows:
        key = declared[name]
        variable = "—" if key in PARTNER_SCHEMA else f"`{key.env_name}`"
        expected = (variable, shown_default(key), key.doc)
        assert (env, default, meaning) == expected, key.dotted


def flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in document.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def test_the_documented_defaults_file_holds_every_declared_key_with_its_default() -> None:
    document = flatten(tomllib.loads((REPO / "config" / "broker.toml").read_text()))
    expected: dict[str, Any] = {}
    for key in SCHEMA:
        if key.dotted not in document and key.default == "":
            # A key read from a file is documented by that form, unset (signing_key_file).
            expected[f"{key.dotted}_file"] = ""
        else:
            expected[key.dotted] = key.default
    typed = {name: (type(value).__name__, value) for name, value in document.items()}
    assert typed == {name: (type(value).__name__, value) for name, value in expected.items()}


def test_the_dataclass_defaults_are_the_keys_defaults(tmp_path: Path) -> None:
    """What code gets from ``ServerSettings()`` is what a config file gets by omitting it
    (server.host once defaulted to 127.0.0.1 in one and 0.0.0.0 in the other)."""
    settings = load_settings(write_config(tmp_path, GOOD), {})
    assert settings.server == ServerSettings()
    assert settings.server.host == "0.0.0.0"
    assert settings.tokens == TokenSettings()
    assert settings.limits == LimitSettings()
    assert settings.cors == CorsSettings()
    assert settings.routes == RouteSettings()
    assert settings.jwt_auth == JwtAuthSettings()
    assert settings.admin == AdminSettings()
    # The memory backend keeps no Redis URL.
    assert settings.cache == dataclasses.replace(CacheSettings(), redis_url="")
    defaults = {field.name: field.default for field in dataclasses.fields(Settings)}
    assert settings.log_format == defaults["log_format"]
    assert settings.log_level == defaults["log_level"]
    assert settings.metrics_port == defaults["metrics_port"]


def test_the_log_level_is_read_in_any_case(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, GOOD), {"BROKER_LOGGING_LEVEL": "DEBUG"})
    assert settings.log_level == "debug"


def test_a_declaration_that_contradicts_its_attribute_is_refused() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Wrong:
        SECTION: ClassVar[str] = "wrong"
        timeout: float = setting(15, doc="an int default for a float attribute")

    with pytest.raises(
        TypeError,
        match=r"Wrong\.timeout: typed float, but its default 15 makes it a key of kind int",
    ):
        schema(Wrong)

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Twice:
        port: int = setting(1, name="twice.port", doc="")
        other: int = setting(2, name="twice.port", doc="")

    with pytest.raises(TypeError, match=r"declared more than once: twice\.port"):
        schema(Twice)


def test_a_short_metrics_bearer_token_is_refused_and_a_long_one_kept_secret(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"metrics.bearer_token: at least 32"):
        load_settings(write_config(tmp_path, GOOD), {"BROKER_METRICS_BEARER_TOKEN": "short"})
    token = "m" * 40
    settings = load_settings(write_config(tmp_path, GOOD), {"BROKER_METRICS_BEARER_TOKEN": token})
    assert settings.metrics_bearer_token == token
    assert token not in repr(settings)
    assert settings.metrics_host == "127.0.0.1"
    assert settings.metrics_port == 0
