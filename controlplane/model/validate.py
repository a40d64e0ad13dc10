"""Structural validation of objects against the OpenAPI subset the schemas use.

Checks types, required fields, enums, bounds and unknown fields, and applies defaults, the way the
Kubernetes API server does for a structural CRD schema (unknown fields are errors here, as with
`kubectl apply --validate=strict`). Returns a new, defaulted value; never mutates its input.
Every problem is reported, not just the first: `check` raises `FieldErrors` listing them all.
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


class FieldErrors(FieldError):
    """Several fields are wrong; `errors` has one FieldError per problem (the first is `path`)."""

    def __init__(self, errors: list[FieldError]) -> None:
        first = errors[0]
        super().__init__(first.path, first.message)
        self.errors = errors
        self.args = ("; ".join(str(e) for e in errors),)

    def __str__(self) -> str:
        return self.args[0]


def raise_all(errors: list[FieldError]) -> None:
    """Raise the collected problems: one FieldError as it is, several as FieldErrors."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise FieldErrors(errors)


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
    """Validate `value` against `schema`; return it with defaults applied. Raises FieldError (or
    FieldErrors, when several fields are wrong)."""
    errors: list[FieldError] = []
    out = _check(value, schema, path, errors)
    raise_all(errors)
    return out


def _check(value: Any, schema: Schema, path: str, errors: list[FieldError]) -> Any:
    """Like `check`, appending each problem to `errors` (a value with a problem is returned as it
    is, and what is under it is not checked further)."""
    def fail(message: str) -> Any:
        errors.append(FieldError(path, message))
        return value

    expected = schema.get("type")
    if expected:
        ok = isinstance(value, _TYPES[expected])
        if expected == "integer" and isinstance(value, bool):
            ok = False
        if expected == "integer" and isinstance(value, float) and value.is_integer():
            value, ok = int(value), True
        if not ok:
            return fail(f"must be {'an' if expected[0] in 'aeiou' else 'a'} {expected}, "
                        f"not {_type_name(value)} ({value!r})")
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(str(v) for v in schema["enum"])
        return fail(f"unsupported value {value!r} (supported: {allowed})")
    if expected == "integer":
        if "minimum" in schema and value < schema["minimum"]:
            return fail(f"must be at least {schema['minimum']}, not {value}")
        if "maximum" in schema and value > schema["maximum"]:
            return fail(f"must be at most {schema['maximum']}, not {value}")
    if expected == "string":
        if "minLength" in schema and len(value) < schema["minLength"]:
            return fail("must not be empty" if schema["minLength"] == 1
                        else f"must be at least {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return fail(f"must be at most {schema['maxLength']} characters")
    if expected == "array":
        if "minItems" in schema and len(value) < schema["minItems"]:
            return fail("must not be empty" if schema["minItems"] == 1
                        else f"must have at least {schema['minItems']} items")
        items = schema.get("items")
        return [_check(v, items, f"{path}[{i}]", errors) if items else v for i, v in enumerate(value)]
    if expected == "object":
        return _check_object(value, schema, path, errors)
    return value


def _check_object(value: dict, schema: Schema, path: str, errors: list[FieldError]) -> dict:
    props: dict[str, Schema] = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            errors.append(FieldError(path, f"keys must be strings, not {_type_name(key)} ({key!r})"))
            continue
        sub = _join(path, key) if props or not extra else f"{path}[{key!r}]"
        if key in props:
            if item is None and key not in schema.get("required", ()):
                continue  # YAML `key:` with no value: treat as unset, like the API server
            out[key] = _check(item, props[key], sub, errors)
        elif isinstance(extra, dict):
            out[key] = _check(item, extra, sub, errors)
        elif props or extra is False:
            known = ", ".join(sorted(props)) or "none"
            errors.append(FieldError(sub, f"unknown field (known fields: {known})"))
        else:
            out[key] = item
    for key in schema.get("required", ()):
        if key not in out:
            errors.append(FieldError(_join(path, key), "required field is missing"))
    for key, sub_schema in props.items():
        if key not in out and "default" in sub_schema:
            out[key] = sub_schema["default"]
    return out
