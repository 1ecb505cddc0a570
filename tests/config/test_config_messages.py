"""Configuration problems that say what to do: "did you mean", the empty file named,
paths read beside the file that names them, unknown BROKER_* variables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker.config.model import ConfigError, load_settings, unknown_environment
from tests.config.test_settings import GOOD, pem, write_config


def problems_of(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ or {})
    return caught.value.problems


def test_unknown_keys_and_sections_get_the_closest_declared_name(tmp_path: Path) -> None:
    # A bare key must stand above the first table in TOML.
    body = (
        "port = 1\n"
        + GOOD
        + """
[server]
prot = 8080
[uptream]
client_id = "x"
retries = 3
[auth.jtw]
enabled = true
[cache]
port = 3
"""
    )
    problems = problems_of(write_config(tmp_path, body))
    assert problems == [
        "port: unknown key (keys live in sections: did you mean server.port, admin.port or"
        " metrics.port?)",
        "server.prot: unknown key (did you mean server.port?)",
        "[uptream]: unknown section (did you mean [upstream]?)",  # once, not per key
        "[auth.jtw]: unknown section (did you mean [auth.jwt]?)",
        "cache.port: unknown key (did you mean server.port, admin.port or metrics.port?)",
    ]


def test_a_misspelt_file_key_is_matched_to_its_file_form(tmp_path: Path) -> None:
    body = GOOD.replace("signing_key_file", "signing_key_fiel")
    problems = problems_of(write_config(tmp_path, body))
    assert "sessions.signing_key_fiel: unknown key (did you mean sessions.signing_key_file?)" in (
        problems
    )


def test_a_key_nothing_resembles_gets_no_guess(tmp_path: Path) -> None:
    problems = problems_of(write_config(tmp_path, GOOD + "\n[server]\nzzzzqqq = 1\n"))
    assert problems == ["server.zzzzqqq: unknown key"]


def test_an_empty_secret_file_is_named(tmp_path: Path) -> None:
    empty = tmp_path / "client-secret"
    empty.write_text("\n")
    keys = tmp_path / "api-keys"
    keys.write_text("# no key yet\n\n")
    body = GOOD.replace(
        'client_secret = "canary-client-secret-value"', f'client_secret_file = "{empty}"'
    ).replace('api_keys = ["canary-api-key-0123456789"]', f'api_keys_file = "{keys}"')
    problems = problems_of(write_config(tmp_path, body))
    assert problems == [
        f"upstream.client_secret_file: {str(empty)!r} is empty",
        f"sessions.api_keys_file: {str(keys)!r} is empty",
    ]
    # The environment's form names the variable.
    problems = problems_of(
        write_config(tmp_path, GOOD), {"BROKER_UPSTREAM_CLIENT_SECRET_FILE": str(empty)}
    )
    assert problems == [f"BROKER_UPSTREAM_CLIENT_SECRET_FILE: {str(empty)!r} is empty"]


def test_relative_file_paths_in_the_file_are_read_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "etc"
    (config_dir / "secrets").mkdir(parents=True)
    (config_dir / "secrets" / "signing.pem").write_text(pem())
    (config_dir / "secrets" / "client-secret").write_text("from-beside-the-file\n")
    (config_dir / "secrets" / "old.pem").write_text(pem())
    body = (
        GOOD.replace('signing_key_file = "@KEY@"', 'signing_key_file = "secrets/signing.pem"')
        .replace(
            'client_secret = "canary-client-secret-value"',
            'client_secret_file = "secrets/client-secret"',
        )
        .replace("[sessions]", '[sessions]\nverify_key_files = ["secrets/old.pem"]')
    )
    config = config_dir / "broker.toml"
    config.write_text(body)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # where a relative path used to be read from
    settings = load_settings(config, {})
    assert settings.upstream.client_secret == "from-beside-the-file"
    assert len(settings.sessions.verify_keys) == 1
    # Named relative to the working directory, the file is found too.
    assert load_settings(Path("../etc/broker.toml"), {}).upstream.client_secret == (
        "from-beside-the-file"
    )
    # A config reached through a symlink (a Kubernetes ConfigMap) reads beside the link.
    link_dir = tmp_path / "mounted"
    (link_dir / "secrets").mkdir(parents=True)
    (link_dir / "secrets" / "signing.pem").write_text(pem())
    (link_dir / "secrets" / "client-secret").write_text("beside-the-link\n")
    (link_dir / "secrets" / "old.pem").write_text(pem())
    (link_dir / "broker.toml").symlink_to(config)
    linked = load_settings(link_dir / "broker.toml", {})
    assert linked.upstream.client_secret == "beside-the-link"


def test_relative_file_paths_in_the_environment_are_read_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, GOOD)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "secret").write_text("from-the-working-directory\n")
    monkeypatch.chdir(cwd)
    settings = load_settings(config, {"BROKER_UPSTREAM_CLIENT_SECRET_FILE": "secret"})
    assert settings.upstream.client_secret == "from-the-working-directory"


def test_unknown_broker_variables_are_found_with_the_closest_setting() -> None:
    environ = {
        "BROKER_SERVER_PROT": "8081",
        "BROKER_UPSTREAM_CLIENT_SECRET_FIEL": "/run/secrets/x",
        "BROKER_NOTHING_LIKE_IT_AT_ALL": "1",
        # Settings, their _FILE forms, and variables that are not ours: no warning.
        "BROKER_SERVER_PORT": "8080",
        "BROKER_SESSIONS_SIGNING_KEY_FILE": "/run/secrets/key",
        "BROKER_API_KEY": "examples/partner_backend.py reads it",
        "BROKER_TEST_COMPILED": "1",
        "TOKEN_BROKER_LISTEN_FILE": "listen.json",
        "PATH": os.environ.get("PATH", ""),
    }
    assert unknown_environment(environ) == [
        ("BROKER_NOTHING_LIKE_IT_AT_ALL", None),
        ("BROKER_SERVER_PROT", "BROKER_SERVER_PORT"),
        ("BROKER_UPSTREAM_CLIENT_SECRET_FIEL", "BROKER_UPSTREAM_CLIENT_SECRET_FILE"),
    ]


def test_a_redis_namespace_with_an_equals_sign_is_refused(tmp_path: Path) -> None:
    """Partners' keys are "<namespace>:partner=<id>:...": a namespace "x:partner=beta"
    would give one broker's default account another's keys of partner beta."""
    body = GOOD + '[cache]\nnamespace = "x:partner=beta"\n'
    assert problems_of(write_config(tmp_path, body)) == [
        "cache.namespace: must not contain '=', got 'x:partner=beta'"
    ]
    load_settings(write_config(tmp_path, GOOD + '[cache]\nnamespace = "prod:broker"\n'), {})
