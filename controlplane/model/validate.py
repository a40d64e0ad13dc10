"""Structural validation of objects against the OpenAPI subset the schemas use.

Checks types, required fields, enums, bounds and unknown fields, and applies defaults, the way the
Kubernetes API server does for a structural CRD schema (unknown fields are errors here, as with
`kubectl apply --validate=strict`). Returns a new, defaulted value; never mutates its input.
"""

from __future__ import annotations

from typing import Any

from .schema import Schema


class FieldError(ValueError):
    """A value does not match its schema. `path` names the field, e.g. spec.sources[0].peer."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


_TYPES = {
    "object": (dict,),
    "array": (list, tuple),
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def check(value: Any, schema: Schema, path: str = "") -> Any:
    """Validate `value` against `schema`; return it with defaults applied."""
    expected = schema.get("type")
    if expected:
        ok = isinstance(value, _TYPES[expected])
        if expected == "integer" and isinstance(value, bool):
            ok = False
        if expected == "integer" and isinstance(value, float) and value.is_integer():
            value, ok = int(value), True
        if not ok:
            raise FieldError(path, f"must be {'an' if expected[0] in 'aeiou' else 'a'} {expected}, "
                                   f"not {_type_name(value)} ({value!r})")
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(str(v) for v in schema["enum"])
        raise FieldError(path, f"unsupported value {value!r} (supported: {allowed})")
    if expected == "integer":
        if "minimum" in schema and value < schema["minimum"]:
            raise FieldError(path, f"must be at least {schema['minimum']}, not {value}")
        if "maximum" in schema and value > schema["maximum"]:
            raise FieldError(path, f"must be at most {schema['maximum']}, not {value}")
    if expected == "string":
        if "minLength" in schema and len(value) < schema["minLength"]:
            raise FieldError(path, "must not be empty" if schema["minLength"] == 1
                             else f"must be at least {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise FieldError(path, f"must be at most {schema['maxLength']} characters")
    if expected == "array":
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise FieldError(path, "must not be empty" if schema["minItems"] == 1
                             else f"must have at least {schema['minItems']} items")
        items = schema.get("items")
        return [check(v, items, f"{path}[{i}]") if items else v for i, v in enumerate(value)]
    if expected == "object":
        return _check_object(value, schema, path)
    return value


def _check_object(value: dict, schema: Schema, path: str) -> dict:
    props: dict[str, Schema] = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise FieldError(path, f"keys must be strings, not {_type_name(key)} ({key!r})")
        sub = _join(path, key) if props or not extra else f"{path}[{key!r}]"
        if key in props:
            if item is None and key not in schema.get("required", ()):
                continue  # YAML `key:` with no value: treat as unset, like the API server
            out[key] = check(item, props[key], sub)
        elif isinstance(extra, dict):
            out[key] = check(item, extra, sub)
        elif props or extra is False:
            known = ", ".join(sorted(props)) or "none"
            raise FieldError(sub, f"unknown field (known fields: {known})")
        else:
            out[key] = item
    for key in schema.get("required", ()):
        if key not in out:
            raise FieldError(_join(path, key), "required field is missing")
    for key, sub_schema in props.items():
        if key not in out and "default" in sub_schema:
            out[key] = sub_schema["default"]
    return out
