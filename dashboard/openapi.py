"""The OpenAPI 3.1 document of the API (``GET /api/v1/openapi.json``); the write
endpoints' parts come from `dashboard.openapi_writes`.

Built by `document()` on request. Enumerations come from the model's own enums, so a
new state or action cannot drift from what the API returns; the tests validate the
document and check every API response of the test suite against its schema.
"""

from __future__ import annotations

from typing import Any

from dashboard import openapi_writes
from dashboard.oas import (
    Schema,
    enum_of,
    error_response,
    json_body,
    nullable,
    obj,
    query_param,
    ref,
    timestamp,
    values,
)
from deepscreen import __version__
from deepscreen.db.models import ImageSource, ImageStatus
from deepscreen.db.moderation import Action, ReviewReason, ReviewState


def document(server_url: str = "/api/v1") -> dict[str, Any]:
    """The whole OpenAPI document, with paths relative to ``server_url``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "deepscreen API",
            "version": __version__,
            "description": (
                "Images with their verdicts and human reviews, and model versions; "
                "submitting images (moderator tokens) and webhook endpoints (admin "
                "tokens). Authenticate with a bearer token from your account page "
                "(/users/me), or a logged-in dashboard session (whose writes need the "
                "X-CSRF-Token header)."
            ),
        },
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}, {"session": []}],
        "paths": {
            "/images": {"get": _list_images(), "post": openapi_writes.submit_operation()},
            "/images/{image_id}": {"get": _get_image()},
            "/models": {
                "get": {
                    "operationId": "listModels",
                    "summary": "Every model version, oldest first",
                    "responses": {"200": json_body("ModelList"), "401": error_response()},
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
                        "401": error_response(),
                    },
                }
            },
            **openapi_writes.paths(),
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
            "schemas": {**_schemas(), **openapi_writes.schemas()},
        },
    }


def _list_images() -> dict[str, Any]:
    probability = {"type": "number", "minimum": 0, "maximum": 1}
    return {
        "operationId": "listImages",
        "summary": "Images in id order, filtered like the review queue",
        "description": (
            "Images without a verdict (queued, failed) are listed too, unless a filter "
            "on the verdict is given. Page with `after` = `next_after` of the last page."
        ),
        "parameters": [
            query_param(
                "label", {"type": "string", "maxLength": 64}, "final label (human, else model)"
            ),
            query_param("score_min", probability, "score at least"),
            query_param("score_max", probability, "score at most"),
            query_param("model_version", {"type": "integer", "minimum": 1}, "model version id"),
            query_param("source", enum_of(ImageSource), "how the image was registered"),
            query_param("since", {"type": "string", "format": "date"}, "registered on or after"),
            query_param("until", {"type": "string", "format": "date"}, "registered on or before"),
            query_param(
                "state",
                {"type": "string", "enum": [*values(ReviewState), "queue", "all"]},
                "review state; `queue` is open or escalated",
            ),
            query_param("reason", enum_of(ReviewReason), "why a human is asked"),
            query_param("flagged", {"type": "boolean"}, "flagged as misclassified"),
            query_param("status", enum_of(ImageStatus), "pipeline status of the image"),
            query_param(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                "page size",
            ),
            query_param("after", {"type": "integer", "minimum": 0}, "only ids greater than this"),
        ],
        "responses": {
            "200": json_body("ImageList"),
            "400": error_response("A parameter does not parse"),
            "401": error_response(),
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
            "200": json_body("ImageDetail"),
            "401": error_response(),
            "404": error_response("No such image"),
        },
    }


def _schemas() -> dict[str, Schema]:
    image_fields: dict[str, Schema] = {
        "id": {"type": "integer"},
        "bucket": {"type": "string", "description": "S3 bucket, or file:///root of a folder"},
        "key": {"type": "string"},
        "status": enum_of(ImageStatus),
        "source": enum_of(ImageSource),
        "created_at": timestamp(),
        "verdict": {"anyOf": [ref("Verdict"), {"type": "null"}]},
    }
    detail_fields: dict[str, Schema] = {
        **image_fields,
        "etag": {"type": "string"},
        "sha256": nullable("string"),
        "size": nullable("integer"),
        "content_type": nullable("string"),
        "width": nullable("integer"),
        "height": nullable("integer"),
        "failure_reason": nullable("string"),
        "finished_at": timestamp(nullable=True),
        "predictions": {"type": "array", "items": ref("Prediction")},
        "reviews": {"type": "array", "items": ref("Review")},
    }
    faces: Schema = {
        "anyOf": [{"type": "array", "items": ref("Face")}, {"type": "null"}],
        "description": (
            "faces the model's face stage found, largest first, in original image pixels; "
            "null for a model without a face stage"
        ),
    }
    model_ref = {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "sha256": {"type": "string"},
    }
    return {
        "Error": obj(
            {
                "error": {"type": "string"},
                "details": {"type": "array", "items": {"type": "string"}},
            },
            required=["error"],
        ),
        "Face": obj(
            {
                "x0": {"type": "number"},
                "y0": {"type": "number"},
                "x1": {"type": "number"},
                "y1": {"type": "number"},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "score": {
                    "type": ["number", "null"],
                    "minimum": 0,
                    "maximum": 1,
                    "description": "null for a face beyond the model's max_faces",
                },
            }
        ),
        "Verdict": obj(
            {
                "model_version_id": {"type": "integer"},
                "score": {
                    "type": ["number", "null"],
                    "minimum": 0,
                    "maximum": 1,
                    "description": "probability of fake; null when model_label is no_face",
                },
                "model_label": {
                    "type": "string",
                    "description": "real, fake, or no_face (the face stage found no face)",
                },
                "model_reason": {
                    **nullable("string"),
                    "description": "why the model gave no score (no_face), else null",
                },
                "faces": faces,
                "human_label": nullable("string"),
                "final_label": {
                    "type": "string",
                    "description": "the human decision when there is one, else the model's",
                },
                "state": enum_of(ReviewState),
                "reason": {"anyOf": [enum_of(ReviewReason), {"type": "null"}]},
                "priority": {"type": "number"},
                "flagged": {"type": "boolean"},
                "flag_label": nullable("string"),
                "decided_at": timestamp(nullable=True),
                "updated_at": timestamp(),
            }
        ),
        "Image": obj(image_fields),
        "ImageDetail": obj(detail_fields),
        "ImageList": obj(
            {
                "items": {"type": "array", "items": ref("Image")},
                "limit": {"type": "integer"},
                "next_after": {
                    **nullable("integer"),
                    "description": "pass as `after` for the next page; null on the last",
                },
            }
        ),
        "Prediction": obj(
            {
                "id": {"type": "integer"},
                "model_version": obj(model_ref),
                "score": nullable("number"),
                "label": {"type": "string"},
                "reason": nullable("string"),
                "faces": faces,
                "threshold": {"type": "number"},
                "inference_ms": {"type": "number"},
                "created_at": timestamp(),
            }
        ),
        "Review": obj(
            {
                "id": {"type": "integer"},
                "user": {"type": "string"},
                "action": enum_of(Action),
                "label": nullable("string"),
                "note": nullable("string"),
                "model_version_id": nullable("integer"),
                "score": nullable("number"),
                "created_at": timestamp(),
            }
        ),
        "Model": obj(
            {
                **model_ref,
                "active": {"type": "boolean"},
                "threshold": nullable("number"),
                "labels": {"type": ["array", "null"], "items": {"type": "string"}},
                "created_at": timestamp(),
            }
        ),
        "ModelList": obj({"items": {"type": "array", "items": ref("Model")}}),
    }
