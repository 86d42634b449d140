"""The OpenAPI 3.1 document of the read API (``GET /api/v1/openapi.json``).

Built by `document()` on request. Enumerations come from the model's own enums, so a
new state or action cannot drift from what the API returns; the tests validate the
document and check every API response of the test suite against its schema.
"""

from __future__ import annotations

import enum
from typing import Any

from deepscreen import __version__
from deepscreen.db.models import ImageSource, ImageStatus
from deepscreen.db.moderation import Action, ReviewReason, ReviewState

Schema = dict[str, Any]


def document(server_url: str = "/api/v1") -> dict[str, Any]:
    """The whole OpenAPI document, with paths relative to ``server_url``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "deepscreen read API",
            "version": __version__,
            "description": (
                "Images with their verdicts and human reviews, and model versions. "
                "Read only. Authenticate with a bearer token from your account page "
                "(/users/me), or a logged-in dashboard session."
            ),
        },
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}, {"session": []}],
        "paths": {
            "/images": {"get": _list_images()},
            "/images/{image_id}": {"get": _get_image()},
            "/models": {
                "get": {
                    "operationId": "listModels",
                    "summary": "Every model version, oldest first",
                    "responses": {"200": _json("ModelList"), "401": _error_response()},
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1 document",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "401": _error_response(),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token; only its SHA-256 is stored server-side.",
                },
                "session": {"type": "apiKey", "in": "cookie", "name": "deepscreen_session"},
            },
            "schemas": _schemas(),
        },
    }


def _list_images() -> dict[str, Any]:
    def query(name: str, schema: Schema, description: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "schema": schema,
            "description": description,
        }

    probability = {"type": "number", "minimum": 0, "maximum": 1}
    return {
        "operationId": "listImages",
        "summary": "Images in id order, filtered like the review queue",
        "description": (
            "Images without a verdict (queued, failed) are listed too, unless a filter "
            "on the verdict is given. Page with `after` = `next_after` of the last page."
        ),
        "parameters": [
            query("label", {"type": "string", "maxLength": 64}, "final label (human, else model)"),
            query("score_min", probability, "score at least"),
            query("score_max", probability, "score at most"),
            query("model_version", {"type": "integer", "minimum": 1}, "model version id"),
            query("source", _enum(ImageSource), "how the image was registered"),
            query("since", {"type": "string", "format": "date"}, "registered on or after"),
            query("until", {"type": "string", "format": "date"}, "registered on or before"),
            query(
                "state",
                {"type": "string", "enum": [*_values(ReviewState), "queue", "all"]},
                "review state; `queue` is open or escalated",
            ),
            query("reason", _enum(ReviewReason), "why a human is asked"),
            query("flagged", {"type": "boolean"}, "flagged as misclassified"),
            query("status", _enum(ImageStatus), "pipeline status of the image"),
            query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                "page size",
            ),
            query("after", {"type": "integer", "minimum": 0}, "only ids greater than this"),
        ],
        "responses": {
            "200": _json("ImageList"),
            "400": _error_response("A parameter does not parse"),
            "401": _error_response(),
        },
    }


def _get_image() -> dict[str, Any]:
    return {
        "operationId": "getImage",
        "summary": "One image with its predictions, verdict and review history",
        "parameters": [
            {
                "name": "image_id",
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            },
        ],
        "responses": {
            "200": _json("ImageDetail"),
            "401": _error_response(),
            "404": _error_response("No such image"),
        },
    }


def _schemas() -> dict[str, Schema]:
    image_fields: dict[str, Schema] = {
        "id": {"type": "integer"},
        "bucket": {"type": "string", "description": "S3 bucket, or file:///root of a folder"},
        "key": {"type": "string"},
        "status": _enum(ImageStatus),
        "source": _enum(ImageSource),
        "created_at": _time(),
        "verdict": {"anyOf": [_ref("Verdict"), {"type": "null"}]},
    }
    detail_fields: dict[str, Schema] = {
        **image_fields,
        "etag": {"type": "string"},
        "sha256": _nullable("string"),
        "size": _nullable("integer"),
        "content_type": _nullable("string"),
        "width": _nullable("integer"),
        "height": _nullable("integer"),
        "failure_reason": _nullable("string"),
        "finished_at": _time(nullable=True),
        "predictions": {"type": "array", "items": _ref("Prediction")},
        "reviews": {"type": "array", "items": _ref("Review")},
    }
    model_ref = {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "sha256": {"type": "string"},
    }
    return {
        "Error": _object(
            {
                "error": {"type": "string"},
                "details": {"type": "array", "items": {"type": "string"}},
            },
            required=["error"],
        ),
        "Verdict": _object(
            {
                "model_version_id": {"type": "integer"},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
                "model_label": {"type": "string"},
                "human_label": _nullable("string"),
                "final_label": {
                    "type": "string",
                    "description": "the human decision when there is one, else the model's",
                },
                "state": _enum(ReviewState),
                "reason": {"anyOf": [_enum(ReviewReason), {"type": "null"}]},
                "priority": {"type": "number"},
                "flagged": {"type": "boolean"},
                "flag_label": _nullable("string"),
                "decided_at": _time(nullable=True),
                "updated_at": _time(),
            }
        ),
        "Image": _object(image_fields),
        "ImageDetail": _object(detail_fields),
        "ImageList": _object(
            {
                "items": {"type": "array", "items": _ref("Image")},
                "limit": {"type": "integer"},
                "next_after": {
                    **_nullable("integer"),
                    "description": "pass as `after` for the next page; null on the last",
                },
            }
        ),
        "Prediction": _object(
            {
                "id": {"type": "integer"},
                "model_version": _object(model_ref),
                "score": {"type": "number"},
                "label": {"type": "string"},
                "threshold": {"type": "number"},
                "inference_ms": {"type": "number"},
                "created_at": _time(),
            }
        ),
        "Review": _object(
            {
                "id": {"type": "integer"},
                "user": {"type": "string"},
                "action": _enum(Action),
                "label": _nullable("string"),
                "note": _nullable("string"),
                "model_version_id": _nullable("integer"),
                "score": _nullable("number"),
                "created_at": _time(),
            }
        ),
        "Model": _object(
            {
                **model_ref,
                "active": {"type": "boolean"},
                "threshold": _nullable("number"),
                "labels": {"type": ["array", "null"], "items": {"type": "string"}},
                "created_at": _time(),
            }
        ),
        "ModelList": _object({"items": {"type": "array", "items": _ref("Model")}}),
    }


def _object(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
    """A closed object: every listed field is present unless ``required`` says otherwise."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: str) -> dict[str, Any]:
    return {"description": "OK", "content": {"application/json": {"schema": _ref(schema)}}}


def _error_response(description: str = "Missing, invalid or revoked credentials") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _nullable(kind: str) -> Schema:
    return {"type": [kind, "null"]}


def _time(nullable: bool = False) -> Schema:
    return {"type": ["string", "null"] if nullable else "string", "format": "date-time"}


def _enum(cls: type[enum.Enum]) -> Schema:
    return {"type": "string", "enum": _values(cls)}


def _values(cls: type[enum.Enum]) -> list[str]:
    return [str(member.value) for member in cls]
