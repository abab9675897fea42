"""Declarative schemas: decode JSON/TOML data into frozen msgspec Structs, with errors people can act on.

Why msgspec: one small C-extension wheel (x86-64 and aarch64, no other dependencies) that validates
while it builds the typed object, fast enough for a Raspberry-Pi-class board, with frozen Structs
that are also the types the code passes around. Its own errors name the path ("$.defense.kind");
`decode` rewords them in EdgeGuard's form: the key path, what was expected (from the type, or the
`description` of its `msgspec.Meta`), what was got (from the data itself), the nearest valid key for
an unknown one, and what to do.

    manifest = decode(data, Manifest, error=BundleError, fix="Re-export the bundle.")
    # BundleError: defense.subsamplng: unknown key; expected one of kind, ...; Did you mean 'subsampling'?
"""

from __future__ import annotations

import difflib
import re
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi

from edge_guard.errors import EdgeGuardError, expected_got, printable

T = TypeVar("T")

_AT = re.compile(r" - at `\$(.*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(.*)`")
_MISSING = re.compile(r"^Object missing required field `(.*)`")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def decode(data: Any, type_: type[T], *, error: type[EdgeGuardError], fix: str = "", root: str = "") -> T:
    """Validate builtins `data` (from json.loads / tomllib) into `type_`; raise `error` naming the key path.

    root: a prefix for the key paths (e.g. "members[0]" when decoding one entry of a list).
    """
    try:
        return msgspec.convert(data, type_, strict=True)
    except msgspec.ValidationError as exc:
        raise error(explain(str(exc), data, type_, fix, root)) from None


def explain(message: str, data: Any, type_: Any, fix: str = "", root: str = "") -> str:
    """Reword one msgspec validation message (see `decode`)."""
    match = _AT.search(message)
    raw_path = match.group(1) if match else ""
    message = _AT.sub("", message)
    steps: list[str | int] = [name if name else int(index) for name, index in _STEP.findall(raw_path)]
    path = _join(root, *steps)
    info = _type_at(mi.type_info(type_), steps)
    if unknown := _UNKNOWN.match(message):
        key = unknown.group(1)
        allowed = [f.encode_name for f in _struct(info).fields] if _struct(info) else []
        near = difflib.get_close_matches(key, allowed, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        return printable(f"{_join(path, key)}: unknown key; expected one of {', '.join(allowed)}.{hint}")
    if missing := _MISSING.match(message):
        return expected_got(_join(path, missing.group(1)), "a required key", "nothing (key missing)", fix)
    found, value = _value_at(data, steps)
    type_mismatch = ", got `" in message  # a wrong JSON type, not a value outside the type's constraints
    expected = describe(info, bare=type_mismatch)
    if not found:
        return expected_got(path or "document", expected, message, fix)
    if message.startswith("Invalid enum value"):
        choices = _choices(info)
        near = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"Did you mean {near[0]!r}?" if near else fix
        return expected_got(path, expected, repr(value), hint)
    return expected_got(path or "document", expected, _got(value, info, type_mismatch=type_mismatch), fix)


def _join(path: str, *steps: str | int) -> str:
    for step in steps:
        path = f"{path}[{step}]" if isinstance(step, int) else (f"{path}.{step}" if path else str(step))
    return path


def _unwrap(info: Any) -> Any:
    while isinstance(info, mi.Metadata):
        info = info.type
    return info


_OBJECTS = (mi.StructType, mi.DataclassType)  # types with named fields


def _struct(info: Any) -> mi.StructType | mi.DataclassType | None:
    """The struct (or dataclass) type of `info`, looking inside an Optional."""
    info = _unwrap(info)
    if isinstance(info, mi.UnionType):
        return next((t for t in map(_unwrap, info.types) if isinstance(t, _OBJECTS)), None)
    return info if isinstance(info, _OBJECTS) else None


def _type_at(info: Any, steps: list[str | int]) -> Any:
    """The type-info node a key path leads to (None when the path leaves the schema)."""
    for step in steps:
        node = _unwrap(info)
        if isinstance(node, mi.UnionType):  # an Optional: follow the branch that has children
            node = next((_unwrap(t) for t in node.types if not isinstance(_unwrap(t), mi.NoneType)), node)
        if isinstance(step, str):
            struct = _struct(node)
            if struct is not None:
                info = next((f.type for f in struct.fields if f.encode_name == step), None)
            else:
                info = node.value_type if isinstance(node, mi.DictType) else None
        elif isinstance(node, mi.TupleType):
            info = node.item_types[step] if step < len(node.item_types) else None
        else:
            info = getattr(node, "item_type", None)
        if info is None:
            return None
    return info


def _value_at(data: Any, steps: list[str | int]) -> tuple[bool, Any]:
    for step in steps:
        try:
            data = data[step]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, data


def _choices(info: Any) -> list[str]:
    node = _unwrap(info)
    if isinstance(node, mi.EnumType):
        return [str(m.value) for m in node.cls]
    if isinstance(node, mi.LiteralType):
        return [str(v) for v in node.values]
    return []


def describe(info: Any, *, bare: bool = False) -> str:
    """The 'expected ...' phrase for a type-info node; bare: the JSON type alone, without constraints."""
    if isinstance(info, mi.Metadata):
        description = None if bare else (info.extra_json_schema or {}).get("description")
        return description or describe(info.type, bare=bare)
    if bare and isinstance(info, (mi.IntType, mi.FloatType, mi.StrType, mi.ListType, mi.VarTupleType)):
        names = {mi.IntType: "an integer", mi.FloatType: "a number", mi.StrType: "a string"}
        return names.get(type(info), "a JSON list")
    if isinstance(info, (mi.EnumType, mi.LiteralType)):
        return "one of " + ", ".join(repr(c) for c in _choices(info))
    if isinstance(info, mi.BoolType):
        return "true or false"
    if isinstance(info, mi.IntType):
        lo, hi = info.ge, info.le
        if lo is not None and hi is not None:
            return f"an integer in {lo}..{hi}"
        return f"an integer >= {lo}" if lo is not None else "an integer"
    if isinstance(info, mi.FloatType):
        return f"a number > {info.gt:g}" if info.gt is not None else "a number"
    if isinstance(info, mi.StrType):
        return "a non-empty string" if info.min_length else "a string"
    if isinstance(info, (mi.ListType, mi.VarTupleType)):
        return "a non-empty list" if info.min_length else "a JSON list"
    if isinstance(info, mi.TupleType):
        return f"a list of {len(info.item_types)} values"
    if isinstance(info, (mi.DictType, *_OBJECTS)):
        return "a JSON object"
    if isinstance(info, mi.NoneType):
        return "null"
    if isinstance(info, mi.UnionType):
        return " or ".join(describe(t, bare=bare) for t in info.types)
    return "a valid value"


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _got(value: Any, info: Any, *, type_mismatch: bool) -> str:
    """What was got: a list's length, a container's type, a scalar's value (with its type when wrong)."""
    node = _unwrap(info)
    container = isinstance(node, (mi.ListType, mi.VarTupleType, mi.TupleType, mi.DictType, *_OBJECTS))
    if container and isinstance(value, list):
        return "[]" if not value else f"{len(value)} value{'s' if len(value) != 1 else ''}"
    if container or isinstance(value, (dict, list)):
        return _type_name(value)
    return f"{value!r} ({_type_name(value)})" if type_mismatch else repr(value)
