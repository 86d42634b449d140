"""Helpers for the write API's tests: a client that checks every answer against the
OpenAPI document, and the tasks waiting in the embedded (filesystem) broker."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from test_dashboard_api import check_response
from werkzeug.test import TestResponse

from dashboard import openapi
from deepscreen.config import Settings


class ApiClient:
    """Calls ``/api/v1`` with a bearer token (and no cookie); every answer's status must
    be documented for its path and method, and its body must match the schema."""

    def __init__(self, client: FlaskClient, token: str | None) -> None:
        self.client, self.token = client, token
        self.doc = openapi.document()

    def call(
        self, method: str, path: str, *, token: str | None = "default", **kwargs: Any
    ) -> TestResponse:
        token = self.token if token == "default" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = self.client.open(
            "/api/v1" + path, method=method.upper(), headers=headers, **kwargs
        )
        check_response(self.doc, path, response, method.lower())
        return response

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.call("get", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> TestResponse:
        return self.call("post", path, **kwargs)


def queued_tasks(settings: Settings) -> list[tuple[str, list[Any]]]:
    """(task name, args) of every message waiting in the filesystem broker, oldest first."""
    folder = Path(settings.queue_dir) / "messages"
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.msg")):
        message = json.loads(path.read_text())
        args = json.loads(base64.b64decode(message["body"]))[0]
        out.append((message["headers"]["task"], args))
    return out
