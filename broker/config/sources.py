"""Raw configuration values: the TOML file, ``BROKER_*`` overrides and ``*_file`` secrets.

This module knows where values come from and how to coerce them to the declared
type; ``settings`` knows what they mean. Problems are collected, never raised one
at a time, so that a broken config is reported in a single message.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal["str", "int", "float", "bool", "list"]
# A value as the file, the environment or a secret file gives it, once coerced to its kind.
RawValue = str | int | float | bool | list[str]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# BROKER_* variables of this project that are not settings: examples/partner_backend.py
# reads the first two, the test suite the others. Never warned about.
NOT_SETTINGS = frozenset(
    {"BROKER_API_KEY", "BROKER_URL", "BROKER_TEST_COMPILED", "BROKER_TEST_IMAGE",
     "BROKER_TEST_REDIS_IMAGE"}
)  # fmt: skip


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
    # A list of file paths (verify_key_files): relative ones in the TOML file are read
    # from the file's directory, like every ``<key>_file``.
    paths: bool = False

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

    def load(
        self, document: Mapping[str, Any], environ: Mapping[str, str], base: Path | None = None
    ) -> None:
        """Values from *document* (the TOML file), then from *environ*. *base* is the
        file's directory: relative paths the file names (``<key>_file``, a key of paths)
        are read from there; those the environment names, from the working directory."""
        self._load_document(document, base or Path())
        self._load_environ(environ)

    def _load_document(self, document: Mapping[str, Any], base: Path) -> None:
        unknown_sections: set[str] = set()
        for dotted, given in _flatten(document):
            key = self._schema.get(dotted)
            stem = dotted.removesuffix("_file")
            if key is not None:
                value = given
                if key.paths and isinstance(given, list):
                    value = [_beside(base, v) if isinstance(v, str) else v for v in given]
                self._set(key, value, origin=dotted)
            elif stem != dotted and stem in self._schema:
                path = _beside(base, given) if isinstance(given, str) and given else given
                self._read_secret_file(self._schema[stem], path, origin=dotted)
            else:
                section = dotted.rpartition(".")[0]
                if section and section not in self._sections():
                    if section not in unknown_sections:
                        unknown_sections.add(section)
                        self.problems.append(self._unknown_section(section))
                else:
                    self.problems.append(f"{dotted}: unknown key{self._suggest_key(dotted)}")

    def _sections(self) -> set[str]:
        """Every section a key lives in, and their parents ("auth" of "auth.jwt")."""
        sections: set[str] = set()
        for key in self._schema.values():
            parts = key.section.split(".")
            sections.update(".".join(parts[: i + 1]) for i in range(len(parts)))
        return sections

    def _unknown_section(self, section: str) -> str:
        close = difflib.get_close_matches(section, sorted(self._sections()), n=1, cutoff=0.6)
        hint = f" (did you mean [{close[0]}]?)" if close else ""
        return f"[{section}]: unknown section{hint}"

    def _suggest_key(self, dotted: str) -> str:
        """ " (did you mean ...?)" for a key no section declares, or ""."""
        section, _, name = dotted.rpartition(".")
        if not section:  # a key above every section: the sections that have one so named
            homes = [k.dotted for k in self._schema.values() if k.name == name]
            return f" (keys live in sections: did you mean {_either(homes)}?)" if homes else ""
        names = [k.name for k in self._schema.values() if k.section == section]
        names += [f"{n}_file" for n in names if self._schema[f"{section}.{n}"].kind != "bool"]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        if close:
            return f" (did you mean {section}.{close[0]}?)"
        elsewhere = [k.dotted for k in self._schema.values() if k.name == name]
        return f" (did you mean {_either(elsewhere)}?)" if elsewhere else ""

    def _load_environ(self, environ: Mapping[str, str]) -> None:
        for key in self._schema.values():
            if (raw := environ.get(key.env_name)) is not None:
                self._set(key, _from_env(key, raw), origin=key.env_name)
            if (path := environ.get(key.env_name + "_FILE")) is not None:
                self._read_secret_file(key, path, origin=key.env_name + "_FILE")

    def unknown_environment(self, environ: Iterable[str]) -> list[tuple[str, str | None]]:
        """(name, closest setting's variable or None) for each ``BROKER_*`` variable in
        *environ* that no key reads: a typo there would otherwise be ignored silently."""
        known: set[str] = set()
        for key in self._schema.values():
            known.update((key.env_name, key.env_name + "_FILE"))
        unknown = []
        for name in sorted(environ):
            if name.startswith("BROKER_") and name not in known and name not in NOT_SETTINGS:
                close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
                unknown.append((name, close[0] if close else None))
        return unknown

    def _read_secret_file(self, key: Key, path: object, *, origin: str) -> None:
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
        value: RawValue
        if key.kind == "list":
            lines = (line.strip() for line in text.splitlines())
            value = [ln for ln in lines if ln and not ln.startswith("#")]
        else:
            value = text if "BEGIN" in text else text.strip()
        if not value or (isinstance(value, str) and not value.strip()):
            # Named, but holds nothing: say which file, not that the key is "required".
            self.problems.append(f"{origin}: {path!r} is empty")
            return
        self.values[key.dotted] = value

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


def _beside(base: Path, path: str) -> str:
    """*path* as the TOML file means it: relative to the file's directory."""
    return str(base / path) if not Path(path).is_absolute() else path


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


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
