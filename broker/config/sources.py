"""Raw configuration values: the TOML file, ``BROKER_*`` overrides and ``*_file`` secrets.

This module knows where values come from and how to coerce them to the declared
type; ``settings`` knows what they mean. Problems are collected, never raised one
at a time, so that a broken config is reported in a single message.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal["str", "int", "float", "bool", "list"]
# A value as the file, the environment or a secret file gives it, once coerced to its kind.
RawValue = str | int | float | bool | list[str]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key: where it lives, its kind, default and secrecy, the checks of
    its own value and its one-line doc. ``broker.config.schema`` makes them from the
    settings dataclasses' fields; nothing else declares a key."""

    section: str
    name: str
    kind: Kind
    default: RawValue
    secret: bool = False
    doc: str = ""
    # True: must not be empty; a string: required only then ("when enabled"), which a
    # cross-field check enforces.
    required: bool | str = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    lower: bool = False  # compared with the choices in lower case

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env_name(self) -> str:
        return "BROKER_" + f"{self.section}_{self.name}".replace(".", "_").upper()


class RawConfig:
    """Values for a fixed schema, resolved from file, environment and secret files."""

    def __init__(self, schema: tuple[Key, ...]) -> None:
        self._schema = {key.dotted: key for key in schema}
        self.values: dict[str, RawValue] = {
            dotted: list(key.default) if isinstance(key.default, list) else key.default
            for dotted, key in self._schema.items()
        }
        self.problems: list[str] = []

    def get(self, dotted: str) -> RawValue:
        return self.values[dotted]

    def text(self, dotted: str) -> str:
        """The value of a "str" key (a TypeError for a key of another kind: a bug)."""
        value = self.values[dotted]
        if not isinstance(value, str):
            raise TypeError(f"{dotted} is not a str key")
        return value

    def flag(self, dotted: str) -> bool:
        value = self.values[dotted]
        if not isinstance(value, bool):
            raise TypeError(f"{dotted} is not a bool key")
        return value

    def strings(self, dotted: str) -> list[str]:
        value = self.values[dotted]
        if not isinstance(value, list):
            raise TypeError(f"{dotted} is not a list key")
        return value

    def load(self, document: Mapping[str, Any], environ: Mapping[str, str]) -> None:
        self._load_document(document)
        self._load_environ(environ)

    def _load_document(self, document: Mapping[str, Any]) -> None:
        for dotted, value in _flatten(document):
            key = self._schema.get(dotted)
            if key is not None:
                self._set(key, value, origin=dotted)
            elif dotted.endswith("_file") and dotted[: -len("_file")] in self._schema:
                self._read_secret_file(self._schema[dotted[: -len("_file")]], value)
            else:
                self.problems.append(f"{dotted}: unknown key")

    def _load_environ(self, environ: Mapping[str, str]) -> None:
        for key in self._schema.values():
            if (raw := environ.get(key.env_name)) is not None:
                self._set(key, _from_env(key, raw), origin=key.env_name)
            if (path := environ.get(key.env_name + "_FILE")) is not None:
                self._read_secret_file(key, path)

    def _read_secret_file(self, key: Key, path: object) -> None:
        origin = f"{key.dotted}_file"
        if not isinstance(path, str):
            self.problems.append(f"{origin}: expected a file path")
            return
        if not path:
            return  # an empty path means "not set", as in the documented defaults
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            self.problems.append(f"{origin}: cannot read {path!r} ({exc.strerror})")
            return
        if key.kind == "list":
            lines = (line.strip() for line in text.splitlines())
            self.values[key.dotted] = [ln for ln in lines if ln and not ln.startswith("#")]
        else:
            self.values[key.dotted] = text if "BEGIN" in text else text.strip()

    def _set(self, key: Key, value: object, *, origin: str) -> None:
        coerced = _coerce(key, value)
        if coerced is None:
            shown = "<redacted>" if key.secret else repr(value)
            self.problems.append(f"{origin}: expected {key.kind}, got {shown}")
        else:
            self.values[key.dotted] = coerced


def read_document(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Parse a TOML file; the second item lists problems (unreadable, bad syntax)."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh), []
    except OSError as exc:
        return {}, [f"{path}: cannot read ({exc.strerror})"]
    except tomllib.TOMLDecodeError as exc:
        return {}, [f"{path}: invalid TOML ({exc})"]


def _flatten(document: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for name, value in document.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, dict):
            items.extend(_flatten(value, dotted + "."))
        else:
            items.append((dotted, value))
    return items


def _from_env(key: Key, raw: str) -> object:  # noqa: PLR0911 - one return per kind
    match key.kind:
        case "list":
            return [item.strip() for item in raw.split(",") if item.strip()]
        case "bool":
            lowered = raw.strip().lower()
            return True if lowered in _TRUE else False if lowered in _FALSE else raw
        case "int":
            try:
                return int(raw)
            except ValueError:
                return raw
        case "float":
            try:
                return float(raw)
            except ValueError:
                return raw
        case _:
            return raw


def _coerce(key: Key, value: object) -> RawValue | None:  # noqa: PLR0911 - one return per kind
    """*value* as *key*'s kind, or None if it is not one (TOML has no null)."""
    match key.kind:
        case "str":
            return value if isinstance(value, str) else None
        case "bool":
            return value if isinstance(value, bool) else None
        case "int":
            return value if isinstance(value, int) and not isinstance(value, bool) else None
        case "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            return float(value)
        case "list":
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return [str(v) for v in value]
            return None
