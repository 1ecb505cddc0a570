"""The README and config/broker.toml document every configuration key, so docs can't drift."""

from __future__ import annotations

import tomllib
from pathlib import Path

from broker.config.model import SCHEMA

REPO = Path(__file__).resolve().parent.parent


def test_every_key_has_a_readme_row_with_its_env_name() -> None:
    readme = (REPO / "README.md").read_text()
    for key in SCHEMA:
        assert f"| `{key.dotted}` | `{key.env_name}` |" in readme, key.dotted


def test_every_key_is_in_the_documented_defaults_file() -> None:
    document = tomllib.loads((REPO / "config" / "broker.toml").read_text())
    for key in SCHEMA:
        section = document
        for part in key.section.split("."):
            section = section[part]
        name = key.name
        if name not in section:
            name = f"{key.name}_file"  # secrets documented by their file form
        assert name in section, key.dotted
        if name == key.name:
            assert section[name] == key.default, key.dotted


def test_the_readme_names_the_commands_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in readme
    assert "scripts/test.sh" in ci
    assert "token-broker serve --sandbox" in readme
