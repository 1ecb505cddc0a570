"""One declaration per configuration key: the settings dataclasses' own fields.

A field declared with ``setting(...)`` is a key of its class's TOML section (the class's
``SECTION``): its default, one-line doc (the README's "meaning" column), secrecy, range
or choices, and how its value becomes the attribute. ``schema`` lists those keys for
``config_source``; ``build`` makes one dataclass from the resolved values, checking each
key on its own; what spans several keys stays with the caller (``settings._build``),
which computes the fields declared with ``built(...)``.

Only start-up runs this: the dataclasses it fills are plain frozen dataclasses.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any, Final, TypeVar, get_type_hints, overload

from broker.config.checks import Checker
from broker.config.sources import Key, Kind, RawConfig, RawValue

_T = TypeVar("_T")
_V = TypeVar("_V")
_C = TypeVar("_C")

# A default as declared: a list key's default is a tuple, like its attribute.
Default = str | int | float | bool | tuple[str, ...]
# Turns a key's checked value into its attribute, reporting problems to the Checker.
Parse = Callable[[Checker, Any], object]

_METADATA: Final = "broker.config.schema"
# The attribute types a key's value is taken as, without a parse.
_PLAIN_TYPES: Final[dict[Kind, object]] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "list": tuple[str, ...],
}


class _Marker(enum.Enum):
    SAME = enum.auto()
    NO_DEFAULT = enum.auto()


# attribute_default=NO_DEFAULT: the constructor must be given the attribute.
NO_DEFAULT: Final = _Marker.NO_DEFAULT


@dataclasses.dataclass(frozen=True, slots=True)
class Declared:
    """A field's metadata: the keys it is read from, and how."""

    keys: tuple[Key, ...]
    parse: Parse | None = None
    # The caller computes the attribute from these keys (and others): a cross-field check.
    built: bool = False


def key(
    default: Default,
    *,
    doc: str,
    name: str = "",
    secret: bool = False,
    required: bool | str = False,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] = (),
    lower: bool = False,
    paths: bool = False,
) -> Key:
    """One key, for ``built`` (``setting`` declares its own). *name*: the field's name by
    default; "section.name" for a key outside the class's section. *required*: True
    checks that the value is not empty (``<key>: required``; a parse checks that itself),
    a condition such as "when enabled" only documents what a cross-field check enforces.
    *minimum*/*maximum* bound a number, *choices* a str (*lower*: compared in lower case,
    and kept so). *paths*: a list of file paths, read beside the TOML file that names
    them. A default that breaks its own rules is refused here.
    """
    kind = _kind(default)
    where = name or repr(default)
    if minimum is not None or maximum is not None:
        if minimum is None or maximum is None or isinstance(default, bool | str | tuple):
            raise TypeError(f"{where}: a range needs both bounds and a number")
        if not minimum <= default <= maximum:
            raise TypeError(f"{where}: the default is outside its range")
    if (choices or lower) and kind != "str":
        raise TypeError(f"{where}: choices are for str keys")
    if choices and default not in choices:
        raise TypeError(f"{where}: the default is not one of its choices")
    if required is True and kind not in {"str", "list"}:
        raise TypeError(f"{where}: only a str or list key can be required")
    if paths and kind != "list":
        raise TypeError(f"{where}: paths are for list keys")
    return Key(
        section="",
        name=name,
        kind=kind,
        default=list(default) if isinstance(default, tuple) else default,
        secret=secret,
        doc=doc,
        required=required,
        minimum=minimum,
        maximum=maximum,
        choices=choices,
        lower=lower,
        paths=paths,
    )


@overload
def setting(
    default: _T,
    *,
    doc: str,
    name: str = "",
    secret: bool = False,
    required: bool | str = False,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] = (),
    lower: bool = False,
    paths: bool = False,
    attribute_default: _T | _Marker = ...,
) -> _T: ...


@overload
def setting(
    default: Default,
    *,
    doc: str,
    name: str = "",
    secret: bool = False,
    required: bool | str = False,
    paths: bool = False,
    parse: Callable[[Checker, Any], _V],
    attribute_default: _V | _Marker = ...,
) -> _V: ...


def setting(
    default: Any,
    *,
    doc: str,
    name: str = "",
    secret: bool = False,
    required: bool | str = False,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] = (),
    lower: bool = False,
    paths: bool = False,
    parse: Parse | None = None,
    attribute_default: Any = _Marker.SAME,
) -> Any:
    """A field that is one key (see ``key``). Its attribute is the key's checked value
    (a list as a tuple), or what *parse* makes of it; the attribute's default is the
    key's unless *attribute_default* says otherwise (``NO_DEFAULT``: none). A secret's
    attribute is left out of the repr."""
    declared = key(
        default,
        doc=doc,
        name=name,
        secret=secret,
        required=required,
        minimum=minimum,
        maximum=maximum,
        choices=choices,
        lower=lower,
        paths=paths,
    )
    if attribute_default is _Marker.SAME:
        attribute_default = default
    return _field(Declared((declared,), parse=parse), attribute_default)


def built(*keys: Key, attribute_default: Any = NO_DEFAULT) -> Any:
    """A field that the caller of ``build`` computes from *keys* (declared with ``key``)
    and perhaps other keys: what a cross-field check makes."""
    return _field(Declared(keys, built=True), attribute_default)


def _field(declared: Declared, attribute_default: object) -> Any:
    secret = any(k.secret for k in declared.keys)
    metadata = {_METADATA: declared}
    if attribute_default is NO_DEFAULT:
        return dataclasses.field(repr=not secret, metadata=metadata)
    return dataclasses.field(default=attribute_default, repr=not secret, metadata=metadata)


def _kind(default: object) -> Kind:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, str):
        return "str"
    if isinstance(default, tuple) and all(isinstance(v, str) for v in default):
        return "list"
    raise TypeError(f"{default!r}: a key's default is a str, int, float, bool or tuple of str")


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    declared: Declared | None  # None: a section (a dataclass of its own)
    section: type | None = None


def _fields(cls: type, section: str | None = None) -> tuple[_Field, ...]:
    """*cls*'s fields with their keys bound to its section (or *section*, for a class
    declared once for many tables, as ``[partners.<id>]``); checks the declarations."""
    hints = get_type_hints(cls)
    section = getattr(cls, "SECTION", "") if section is None else section
    result: list[_Field] = []
    for field in dataclasses.fields(cls):
        declared = field.metadata.get(_METADATA)
        if declared is None:
            hint = hints[field.name]
            if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
                raise TypeError(f"{cls.__name__}.{field.name}: neither a setting nor a section")
            result.append(_Field(field.name, None, hint))
            continue
        keys = tuple(_bind(k, field.name, section, cls) for k in declared.keys)
        declared = dataclasses.replace(declared, keys=keys)
        if not declared.built and declared.parse is None:
            expected = _PLAIN_TYPES[keys[0].kind]
            if hints[field.name] != expected:
                raise TypeError(
                    f"{cls.__name__}.{field.name}: typed {_name(hints[field.name])}, but its"
                    f" default {keys[0].default!r} makes it a key of kind {keys[0].kind},"
                    f" typed {_name(expected)} (or give a parse)"
                )
        result.append(_Field(field.name, declared))
    return tuple(result)


def _name(annotation: object) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def _bind(declared: Key, field_name: str, section: str, cls: type) -> Key:
    name = declared.name or field_name
    if "." in name:
        section, name = name.rsplit(".", 1)
    if not section:
        raise TypeError(f"{cls.__name__}.{field_name}: no SECTION, so name the key's section")
    return dataclasses.replace(declared, section=section, name=name)


def schema(cls: type) -> tuple[Key, ...]:
    """Every key of *cls* and of its sections, in declaration order; each once."""
    keys: list[Key] = []
    for field in _fields(cls):
        if field.declared is not None:
            keys.extend(field.declared.keys)
        elif field.section is not None:
            keys.extend(schema(field.section))
    seen = [k.dotted for k in keys]
    if duplicates := sorted({d for d in seen if seen.count(d) > 1}):
        raise TypeError(f"declared more than once: {', '.join(duplicates)}")
    return tuple(keys)


def build(
    cls: type[_C], raw: RawConfig, check: Checker, *, section: str | None = None, **computed: Any
) -> _C:
    """*cls* from *raw*: every key checked on its own (required, range, choices), every
    field that is one key taken or parsed from it, every section built the same way.
    *computed* holds the fields declared with ``built`` (and may replace a section);
    *section*: where *cls*'s keys are, if not its ``SECTION``."""
    values: dict[str, Any] = {}
    for field in _fields(cls, section):
        if field.declared is None:
            if field.name not in computed and field.section is not None:
                values[field.name] = build(field.section, raw, check)
            continue
        declared = field.declared
        checked = [_checked(k, raw.get(k.dotted), check, declared) for k in declared.keys]
        if declared.built:
            if field.name not in computed:
                raise TypeError(f"{cls.__name__}.{field.name} is built: pass it to build()")
        elif declared.parse is not None:
            values[field.name] = declared.parse(check, checked[0])
        else:
            value = checked[0]
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values, **computed)


def _checked(spec: Key, value: RawValue, check: Checker, declared: Declared) -> RawValue:
    if spec.required is True and declared.parse is None and not value:
        check.problems.append(f"{spec.dotted}: required")
    if isinstance(value, str):
        if spec.lower:
            value = value.lower()
        if spec.choices:
            check.choice(spec.dotted, value, spec.choices)
    elif (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and spec.minimum is not None
        and spec.maximum is not None
    ):
        check.in_range(spec.dotted, value, spec.minimum, spec.maximum)
    return value
