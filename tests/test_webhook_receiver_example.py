"""The receiver kit: examples/webhook_receiver.py (standard library only) verifies what
deepscreen signs, rejects tampering, wrong secrets and stale timestamps, and handles
each event once."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from loopback_receiver import EXAMPLE, load_example
from services import free_port

from deepscreen.webhooks import headers, new_event_id, new_secret, verify


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load_example()


def delivery(secret: str | list[str], *, age: int = 0) -> tuple[dict[str, str], bytes]:
    """Headers and body as deepscreen sends them, signed ``age`` seconds ago."""
    msg_id = new_event_id()
    body = json.dumps(
        {"id": msg_id, "type": "verdict.created", "timestamp": "t", "data": {"image_id": 7}},
        separators=(",", ":"),
    ).encode()
    secrets = [secret] if isinstance(secret, str) else secret
    return headers(secrets, msg_id, int(time.time()) - age, body), body


def test_a_genuine_delivery_is_accepted(example: ModuleType) -> None:
    secret = new_secret()
    sent, body = delivery(secret)
    assert example.verify(secret, sent, body) == sent["webhook-id"]
    # ... whatever the case of the header names, as deepscreen's own verify does
    upper = {k.upper(): v for k, v in sent.items()}
    assert example.verify(secret, upper, body) == verify(secret, upper, body)


@pytest.mark.parametrize("case", ["tampered body", "wrong secret", "stale", "future", "no id"])
def test_a_forged_or_stale_delivery_is_rejected(example: ModuleType, case: str) -> None:
    secret = new_secret()
    sent, body = delivery(secret, age={"stale": 301, "future": -301}.get(case, 0))
    if case == "tampered body":
        body = body.replace(b'"image_id":7', b'"image_id":8')
    if case == "no id":
        del sent["webhook-id"]
    key = new_secret() if case == "wrong secret" else secret
    with pytest.raises(example.InvalidWebhook):
        example.verify(key, sent, body)


def test_during_a_rotation_either_secret_verifies(example: ModuleType) -> None:
    old, new = new_secret(), new_secret()
    sent, body = delivery([new, old])
    assert example.verify(old, sent, body) == example.verify(new, sent, body)
    with pytest.raises(example.InvalidWebhook):
        example.verify(new_secret(), sent, body)


@pytest.fixture
def served(example: ModuleType) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """The example's server on a free port: (url, secret, events handled)."""
    secret = new_secret()
    handled: list[dict[str, Any]] = []
    server = example.make_server(example.Receiver([secret], handled.append), port=0)
    server.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", secret, handled
    server.shutdown()
    server.server_close()


def post(url: str, sent: dict[str, str], body: bytes) -> int:
    request = urllib.request.Request(url, data=body, headers=sent, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_server_handles_each_event_once_and_refuses_forgeries(
    served: tuple[str, str, list[dict[str, Any]]],
) -> None:
    url, secret, handled = served
    sent, body = delivery(secret)
    # A delivery and its redelivery are acknowledged; the event is handled once
    assert post(url, sent, body) == 200
    assert post(url, sent, body) == 200
    assert [e["data"]["image_id"] for e in handled] == [7]
    # A tampered body and a wrong secret are refused
    assert post(url, sent, body.replace(b"7", b"8")) == 401
    forged, forged_body = delivery(new_secret())
    assert post(url, forged, forged_body) == 401
    assert len(handled) == 1


def test_the_example_runs_as_a_script(tmp_path: Path) -> None:
    secret, port = new_secret(), free_port()
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--secret", secret, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sent, body = delivery(secret)
        deadline = time.monotonic() + 20
        while True:
            try:
                status = post(f"http://127.0.0.1:{port}/", sent, body)
                break
            except urllib.error.URLError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        assert status == 200
        # The handled event is printed as one JSON line
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["id"] == sent["webhook-id"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_standalone_verifier_in_the_docs_works(tmp_path: Path) -> None:
    # Given the docs' stdlib-only snippet, as written, in a module of its own
    doc = (EXAMPLE.parents[1] / "docs" / "webhooks.md").read_text()
    section = doc.split("### Without deepscreen", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.splitlines()) <= 25
    (tmp_path / "doc_verifier.py").write_text(code)
    spec = importlib.util.spec_from_file_location("doc_verifier", tmp_path / "doc_verifier.py")
    assert spec is not None and spec.loader is not None
    snippet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(snippet)
    # Then it accepts a genuine delivery and rejects tampering and a stale timestamp
    secret = new_secret()
    sent, body = delivery(secret)
    assert snippet.verify(secret, sent, body) == sent["webhook-id"]
    for forged in (body + b" ", body.replace(b"7", b"8")):
        with pytest.raises(snippet.InvalidWebhook):
            snippet.verify(secret, sent, forged)
    stale, stale_body = delivery(secret, age=301)
    with pytest.raises(snippet.InvalidWebhook):
        snippet.verify(secret, stale, stale_body)
