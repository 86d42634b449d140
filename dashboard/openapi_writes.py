"""The OpenAPI paths and schemas of the write API: submitting an image
(`dashboard.api_submit`) and webhooks (`dashboard.api_webhooks`); merged into the
document by `dashboard.openapi.document`."""

from __future__ import annotations

from typing import Any

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
)
from deepscreen.db.webhooks import DeliveryStatus, EndpointKind
from deepscreen.webhooks import EVENT_TYPES

_ADMIN = error_response("The token is not an admin's")
_NOT_FOUND = error_response("No such endpoint (or delivery)")


def submit_operation() -> dict[str, Any]:
    """``POST /images``."""
    return {
        "operationId": "submitImage",
        "summary": "Submit one image for classification",
        "description": (
            "Needs a moderator's or an admin's token. The image is stored in the "
            "submission bucket and queued; poll nothing: give `callback_url` to receive "
            "its `verdict.created`, `review.completed` and `verdict.changed` events, "
            "signed with the secret in this answer (shown once). The server never "
            "fetches a URL."
        ),
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "image": {
                                "type": "string",
                                "contentMediaType": "application/octet-stream",
                                "description": "JPEG, PNG, WebP, GIF, BMP or TIFF",
                            },
                            "callback_url": {"type": "string", "format": "uri"},
                        },
                        "required": ["image"],
                    }
                }
            },
        },
        "responses": {
            "202": json_body("Submission", "Stored and queued"),
            "400": error_response("No image field, or the callback URL is refused"),
            "401": error_response(),
            "403": error_response("The token is a viewer's"),
            "413": error_response("Over the byte or pixel limit"),
            "415": error_response("Not an image in an accepted format"),
            "503": {
                **error_response(
                    "Submissions are off, the store is unavailable, or more images wait for "
                    "classification than DEEPSCREEN_SUBMISSION_MAX_BACKLOG (then with "
                    "Retry-After)"
                ),
                "headers": {
                    "Retry-After": {
                        "description": "Seconds to wait before submitting again (backlog only)",
                        "schema": {"type": "integer", "minimum": 1},
                    }
                },
            },
        },
    }


def paths() -> dict[str, Any]:
    """The webhook paths (admin tokens only)."""
    endpoint_id = _path_param("endpoint_id")
    common = {"401": error_response(), "403": _ADMIN}
    return {
        "/webhooks": {
            "get": {
                "operationId": "listWebhooks",
                "summary": "Webhook endpoints of one kind in id order",
                "parameters": [
                    query_param(
                        "kind", enum_of(EndpointKind), "subscription (default) or callback"
                    ),
                    query_param("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "page"),
                    query_param(
                        "after", {"type": "integer", "minimum": 0}, "ids greater than this"
                    ),
                ],
                "responses": {
                    "200": json_body("WebhookList"),
                    "400": error_response("A parameter does not parse"),
                    **common,
                },
            },
            "post": {
                "operationId": "createWebhook",
                "summary": "Subscribe a URL to event types; the answer holds the secret",
                "requestBody": _json_request("WebhookCreate"),
                "responses": {
                    "201": json_body("WebhookWithSecret", "Created"),
                    "400": error_response("A field is missing or refused (unsafe URL)"),
                    **common,
                },
            },
        },
        "/webhooks/{endpoint_id}": {
            "parameters": [endpoint_id],
            "get": {
                "operationId": "getWebhook",
                "summary": "One endpoint (never its secret)",
                "responses": {"200": json_body("Webhook"), **common, "404": _NOT_FOUND},
            },
            "patch": {
                "operationId": "updateWebhook",
                "summary": "Change url, event types, description or active",
                "description": "Activating clears why the endpoint was disabled.",
                "requestBody": _json_request("WebhookPatch"),
                "responses": {
                    "200": json_body("Webhook"),
                    "400": error_response("A field is refused"),
                    **common,
                    "404": _NOT_FOUND,
                },
            },
            "delete": {
                "operationId": "deleteWebhook",
                "summary": "Delete the endpoint and its delivery log",
                "responses": {"204": {"description": "Deleted"}, **common, "404": _NOT_FOUND},
            },
        },
        "/webhooks/{endpoint_id}/rotate": {
            "parameters": [endpoint_id],
            "post": {
                "operationId": "rotateWebhookSecret",
                "summary": "A new secret; the previous one signs too until it expires",
                "responses": {
                    "200": json_body("WebhookWithSecret"),
                    **common,
                    "404": _NOT_FOUND,
                },
            },
        },
        "/webhooks/{endpoint_id}/deliveries": {
            "parameters": [endpoint_id],
            "get": {
                "operationId": "listWebhookDeliveries",
                "summary": "The delivery log, newest first",
                "parameters": [
                    query_param("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "page"),
                    query_param("before", {"type": "integer", "minimum": 1}, "ids less than this"),
                ],
                "responses": {
                    "200": json_body("DeliveryList"),
                    "400": error_response("A parameter does not parse"),
                    **common,
                    "404": _NOT_FOUND,
                },
            },
        },
        "/webhooks/{endpoint_id}/deliveries/{delivery_id}/replay": {
            "parameters": [endpoint_id, _path_param("delivery_id")],
            "post": {
                "operationId": "replayWebhookDelivery",
                "summary": "Send a delivery again, same event id, from attempt zero",
                "responses": {
                    "202": json_body("Delivery", "Queued again"),
                    **common,
                    "404": _NOT_FOUND,
                    "409": error_response("The endpoint is inactive"),
                },
            },
        },
    }


def schemas() -> dict[str, Schema]:
    event_types: Schema = {
        "type": "array",
        "items": {"type": "string", "enum": list(EVENT_TYPES)},
        "minItems": 1,
    }
    webhook: dict[str, Schema] = {
        "id": {"type": "integer"},
        "kind": enum_of(EndpointKind),
        "url": {"type": "string"},
        "description": nullable("string"),
        "event_types": event_types,
        "image_id": {**nullable("integer"), "description": "a callback's image"},
        "active": {"type": "boolean"},
        "disabled_reason": {**nullable("string"), "description": "why it was disabled"},
        "disabled_at": timestamp(nullable=True),
        "failing_since": timestamp(nullable=True),
        "previous_secret_valid_until": {
            **timestamp(nullable=True),
            "description": "until then deliveries are also signed with the previous secret",
        },
        "created_at": timestamp(),
        "updated_at": timestamp(),
        "last_delivery": {
            "anyOf": [
                obj(
                    {
                        "id": {"type": "integer"},
                        "status": enum_of(DeliveryStatus),
                        "last_status_code": nullable("integer"),
                        "last_attempt_at": timestamp(nullable=True),
                    }
                ),
                {"type": "null"},
            ]
        },
    }
    secret = {"type": "string", "pattern": "^whsec_", "description": "shown once"}
    return {
        "Submission": obj(
            {
                "id": {"type": "integer"},
                "status": {"type": "string", "const": "queued"},
                "bucket": {"type": "string"},
                "key": {"type": "string"},
                "links": obj({"self": {"type": "string"}, "dashboard": {"type": "string"}}),
                "callback": {
                    "anyOf": [
                        obj(
                            {
                                "id": {"type": "integer"},
                                "url": {"type": "string"},
                                "event_types": event_types,
                                "secret": secret,
                            }
                        ),
                        {"type": "null"},
                    ]
                },
            }
        ),
        "Webhook": obj(webhook),
        "WebhookWithSecret": obj({**webhook, "secret": secret}),
        "WebhookList": obj(
            {
                "items": {"type": "array", "items": ref("Webhook")},
                "limit": {"type": "integer"},
                "next_after": nullable("integer"),
            }
        ),
        "WebhookCreate": obj(
            {
                "url": {"type": "string", "format": "uri", "maxLength": 2048},
                "event_types": {**event_types, "description": "default: every type"},
                "description": {"type": ["string", "null"], "maxLength": 255},
            },
            required=["url"],
        ),
        "WebhookPatch": obj(
            {
                "url": {"type": "string", "format": "uri", "maxLength": 2048},
                "event_types": event_types,
                "description": {"type": ["string", "null"], "maxLength": 255},
                "active": {"type": "boolean"},
            },
            required=[],
        ),
        "Delivery": obj(
            {
                "id": {"type": "integer"},
                "event_id": {"type": "string", "description": "webhook-id: idempotency key"},
                "event_type": {"type": "string", "enum": list(EVENT_TYPES)},
                "image_id": nullable("integer"),
                "status": enum_of(DeliveryStatus),
                "attempts": {"type": "integer", "minimum": 0},
                "last_status_code": nullable("integer"),
                "last_latency_ms": nullable("number"),
                "last_error": nullable("string"),
                "next_attempt_at": timestamp(nullable=True),
                "last_attempt_at": timestamp(nullable=True),
                "delivered_at": timestamp(nullable=True),
                "created_at": timestamp(),
            }
        ),
        "DeliveryList": obj(
            {
                "items": {"type": "array", "items": ref("Delivery")},
                "limit": {"type": "integer"},
                "next_before": {
                    **nullable("integer"),
                    "description": "pass as `before` for older deliveries; null on the last",
                },
            }
        ),
    }


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "integer"}}


def _json_request(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": ref(schema)}}}
