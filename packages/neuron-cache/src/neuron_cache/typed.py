"""Typed conversion between JSON values and dataclasses, driven by the dataclasses' annotations.

Field constraints live in `dataclasses.field(metadata=...)` under the keys below, so the reader's
checks and the generated JSON Schema come from one declaration:

- ``minimum``: inclusive lower bound of an int or float;
- ``enum``: the allowed values;
- ``pattern``: a regular expression a string must fully match;
- ``description``: text for the JSON Schema.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from functools import cache
from typing import Any, Union

from neuron_cache.errors import NeuronConfigError

_JSON_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}


@cache
def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"an object whose values are {_describe(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return f"an object ({tp.__name__})"
    if tp is Any:
        return "any JSON value"
    return _JSON_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _check_constraints(path: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    if value is None:
        return
    if "enum" in meta and value not in meta["enum"]:
        raise NeuronConfigError(path, value, "not a recognised value", allowed=", ".join(map(repr, meta["enum"])))
    if "minimum" in meta and isinstance(value, (int, float)) and value < meta["minimum"]:
        raise NeuronConfigError(path, value, f"must be >= {meta['minimum']}", allowed=f"values >= {meta['minimum']}")
    if "pattern" in meta and isinstance(value, str) and not re.fullmatch(meta["pattern"], value):
        meaning = f" ({meta['description']})" if "description" in meta else ""
        raise NeuronConfigError(path, value, "has the wrong format", allowed=f"strings matching {meta['pattern']}{meaning}")


def from_json(tp: Any, value: Any, path: str) -> Any:
    """Convert `value` (parsed JSON) to `tp`, raising NeuronConfigError naming `path` on mismatch."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return from_json(option, value, path)
            except NeuronConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise NeuronConfigError(path, value, "has the wrong type", allowed=_describe(tp))
    if origin is list:
        if not isinstance(value, list):
            raise NeuronConfigError(path, value, "has the wrong type", allowed=_describe(tp))
        (item,) = typing.get_args(tp)
        return [from_json(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise NeuronConfigError(path, value, "has the wrong type", allowed=_describe(tp))
        _, item = typing.get_args(tp)
        return {str(k): from_json(item, v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise NeuronConfigError(path, value, "has the wrong type", allowed=_describe(tp))
        return dataclass_from_json(tp, value, path)
    if tp is Any:
        return value
    # bool is a subclass of int in Python but not in JSON: `"batch_size": true` is a mistake.
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise NeuronConfigError(path, value, "has the wrong type", allowed="an integer")
    if tp is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise NeuronConfigError(path, value, "has the wrong type", allowed="a number")
    if tp in (str, bool) and not isinstance(value, tp):
        raise NeuronConfigError(path, value, "has the wrong type", allowed=_describe(tp))
    return float(value) if tp is float else value


def dataclass_from_json(cls: type, data: dict[str, Any], path: str = "") -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    prefix = f"{path}." if path else ""
    if unknown:
        raise NeuronConfigError(
            f"{prefix}{unknown[0]}",
            data[unknown[0]],
            "is not a field of this schema version (unknown fields are rejected so that a typo never "
            "silently falls back to a default)",
            allowed=", ".join(fields),
            fix="remove or rename the field; free-form data belongs under 'metadata'",
        )
    kwargs = {}
    types_ = hints(cls)
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise NeuronConfigError(
                    f"{prefix}{name}", None, "is required but missing", allowed=_describe(types_[name]),
                    fix=f"add '{name}' to the object",
                )
            continue
        value = from_json(types_[name], data[name], f"{prefix}{name}")
        _check_constraints(f"{prefix}{name}", value, f.metadata)
        if isinstance(value, list):
            for i, item in enumerate(value):
                _check_constraints(f"{prefix}{name}[{i}]", item, f.metadata.get("items", {}))
        kwargs[name] = value
    return cls(**kwargs)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Fields added after a schema version shipped are written only when set (`omit_default`), so that a
        # config without them is written back byte for byte.
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (f.metadata.get("omit_default") and getattr(value, f.name) == _default(f))}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def json_schema_of(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) for a type; dataclasses are collected into `defs`."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return {"anyOf": [json_schema_of(a, defs) for a in typing.get_args(tp)]}
    if origin is list:
        return {"type": "array", "items": json_schema_of(typing.get_args(tp)[0], defs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": json_schema_of(typing.get_args(tp)[1], defs)}
    if dataclasses.is_dataclass(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # reserve the name first: definitions may refer to themselves
            defs[tp.__name__] = _dataclass_schema(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    if tp is Any:
        return {}
    return {"type": _JSON_NAMES[tp]}


def _with_item_constraints(prop: dict[str, Any], items: dict[str, Any]) -> dict[str, Any]:
    """Add `items` constraints to an array schema, also inside the `anyOf` of an optional list."""
    if "items" in prop:
        return {**prop, "items": {**prop["items"], **items}}
    if "anyOf" in prop:
        return {**prop, "anyOf": [_with_item_constraints(option, items) for option in prop["anyOf"]]}
    return prop


def _dataclass_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    required = []
    types_ = hints(cls)
    for f in dataclasses.fields(cls):
        prop = json_schema_of(types_[f.name], defs)
        constraints = {k: v for k, v in f.metadata.items() if k in ("minimum", "enum", "pattern", "description")}
        if "pattern" in constraints:
            # JSON Schema patterns match anywhere in the string; the reader's match the whole string.
            constraints["pattern"] = f"^(?:{constraints['pattern']})$"
        if "items" in f.metadata:
            prop = _with_item_constraints(prop, f.metadata["items"])
        prop = {**prop, **constraints}
        props[f.name] = prop
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    if cls.__doc__:
        schema["description"] = " ".join(cls.__doc__.split())
    return schema
