"""Small builders of OpenAPI 3.1 schema fragments, shared by `dashboard.openapi` and
`dashboard.openapi_writes`."""

from __future__ import annotations

import enum
from typing import Any

Schema = dict[str, Any]


def obj(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
    """A closed object: every listed field is present unless ``required`` says otherwise."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}


def error_response(description: str = "Missing, invalid or revoked credentials") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref("Error")}}}


def nullable(kind: str) -> Schema:
    return {"type": [kind, "null"]}


def timestamp(nullable: bool = False) -> Schema:
    return {"type": ["string", "null"] if nullable else "string", "format": "date-time"}


def enum_of(cls: type[enum.Enum]) -> Schema:
    return {"type": "string", "enum": values(cls)}


def values(cls: type[enum.Enum]) -> list[str]:
    return [str(member.value) for member in cls]


def query_param(name: str, schema: Schema, description: str) -> dict[str, Any]:
    """An optional query parameter."""
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }
