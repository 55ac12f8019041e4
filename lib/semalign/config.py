"""Typed configs from plain mappings, for the stages to hand to the library.

The library never reads params.yaml: a stage reads its section through `read_section`, which turns it into
the library's dataclass. `build` checks every key up front: unknown or missing keys, a value of the wrong
type (from the field's annotation) or out of its range (from the field's `positive`/`at_least`/`between`
metadata) stop with one line naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from semalign.errors import SemalignError

C = TypeVar("C")


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The range a numeric field (or each number of a list or mapping field) must lie in."""

    low: float
    low_inclusive: bool = True
    high: float | None = None
    high_inclusive: bool = True

    def holds(self, value: float) -> bool:
        above = value >= self.low if self.low_inclusive else value > self.low
        below = self.high is None or (value <= self.high if self.high_inclusive else value < self.high)
        return above and below

    def describe(self, integer: bool) -> str:
        kind = "integer" if integer else "number"
        if self.high is not None:
            left, right = "[" if self.low_inclusive else "(", "]" if self.high_inclusive else ")"
            return f"a {kind} in {left}{self.low:g}, {self.high:g}{right}"
        if self.low == 0 and not self.low_inclusive:
            return f"a positive {kind}"
        return f"{'an' if integer else 'a'} {kind} {'>=' if self.low_inclusive else '>'} {self.low:g}"


def _bounded(default: Any, bounds: Bounds) -> Any:
    return dataclasses.field(default=default, metadata={"bounds": bounds})


def positive(default: Any) -> Any:
    """A dataclass field with `default` that `build` requires to be > 0 (None passes: "not set")."""
    return _bounded(default, Bounds(0, low_inclusive=False))


def at_least(default: Any, low: float) -> Any:
    """A dataclass field with `default` that `build` requires to be >= `low`."""
    return _bounded(default, Bounds(low))


def between(default: Any, low: float, high: float, high_inclusive: bool = True) -> Any:
    """A dataclass field with `default` that `build` requires to lie in [low, high] (or [low, high))."""
    return _bounded(default, Bounds(low, True, high, high_inclusive))


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value `value` has the annotated type `hint` (an int is a float; a bool is neither)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (bool, str, type(None)):
        return isinstance(value, hint)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, Mapping) and all(
            _fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items()
        )
    if dataclasses.is_dataclass(hint):  # a nested section (data.tasks.<task>), checked by its own build
        return isinstance(value, (Mapping, hint))
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    """`hint` in words, for the fix of a wrong-typed value."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin in (list, tuple):
        return f"a list of {_PLURALS.get(args[0], _describe(args[0]))}"
    if origin is dict:
        return f"a mapping {{name: {_describe(args[1])}}}"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {sorted(f.name for f in dataclasses.fields(hint))}"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _numbers(name: str, value: Any) -> list[tuple[str, Any]]:
    """(dotted name, number) for `value` itself or each number inside a list or mapping value."""
    if isinstance(value, Mapping):
        return [(f"{name}.{key}", v) for key, v in value.items()]
    if isinstance(value, (list, tuple)):
        return [(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return [(name, value)]


def check(cls: type, mapping: Mapping[str, Any], section: str) -> None:
    """Stop on the first value of `mapping` whose type does not match `cls`'s annotation of it or whose
    number lies outside the field's bounds, naming `section`.<key> and what to set instead."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in mapping:
            continue
        value, hint = mapping[f.name], hints[f.name]
        if not _fits(value, hint):
            # YAML 1.1 reads an exponent without a dot (3e-4) as text
            text_number = isinstance(value, str) and _fits(0.5, hint)
            note = " (with a dot, e.g. 3.0e-4: YAML reads 3e-4 as text)" if text_number else ""
            raise SemalignError(f"params.yaml {section}.{f.name} is {value!r}; set {_describe(hint)}{note}")
        bounds = f.metadata.get("bounds")
        for name, number in _numbers(f.name, value) if bounds else []:
            if isinstance(number, (int, float)) and not isinstance(number, bool) and not bounds.holds(number):
                integer = not _fits(0.5, hint)  # an integer field: say "integer" in the fix
                raise SemalignError(
                    f"params.yaml {section}.{name} is {number!r}; set {bounds.describe(integer)}"
                )


def build(cls: type[C], mapping: Mapping[str, Any] | None, section: str) -> C:
    """`cls(**mapping)` once every key is known, present if required, and of the right type and range;
    errors name the params.yaml `section` and the offending key."""
    mapping = dict(mapping or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise SemalignError(
            f"params.yaml {section}: unknown key(s) {unknown}; known keys are {sorted(fields)}"
        )
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and name not in mapping
    ]
    if required:
        raise SemalignError(f"params.yaml {section}: missing key(s) {required}")
    check(cls, mapping, section)
    return cls(**mapping)


def read_params(params_file: str | Path = "params.yaml") -> dict[str, Any]:
    """The whole params file, for the stage that reports every section."""
    params = yaml.safe_load(Path(params_file).read_text())
    if not isinstance(params, Mapping):
        raise SemalignError(f"{params_file} holds no sections; restore it (see the README's params section)")
    return params


def params_section(key: str, params_file: str | Path = "params.yaml") -> Any:
    """The value at dotted `key` ("train", "models.teacher") of the stage's params file."""
    value: Any = read_params(params_file)
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise SemalignError(f"{params_file} has no {key!r}; add it (see the README's params section)")
        value = value[part]
    return value


def read_section(
    cls: type[C],
    key: str,
    params_file: str | Path = "params.yaml",
    drop: tuple[str, ...] = (),
    **overrides: Any,
) -> C:
    """The params section at dotted `key` as `cls`, without the keys in `drop` and with `overrides` set.
    A key the stage sets itself (an override) may not also appear in the section: it would be ignored."""
    section = params_section(key, params_file) or {}
    if not isinstance(section, Mapping):
        raise SemalignError(f"params.yaml {key} is {section!r}; set a mapping of its keys")
    mapping = {name: value for name, value in section.items() if name not in drop}
    ignored = sorted(set(mapping) & set(overrides))
    if ignored:
        raise SemalignError(
            f"params.yaml {key}: {ignored} are set by the stage, not read from this section; remove them"
        )
    return build(cls, {**mapping, **overrides}, key)
