"""A minimal deepscreen webhook receiver: verifies each delivery and handles each
event once. Standard library only, so it runs without deepscreen installed.

    python examples/webhook_receiver.py --secret whsec_... --port 9000

Give ``--secret`` twice while you rotate the endpoint's secret. Events are printed
as JSON lines; replace `Receiver.handle` with your own code. See docs/webhooks.md.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: Seconds a delivery's timestamp may differ from this machine's clock.
TOLERANCE = 300
#: Largest body accepted; deepscreen's events are a few hundred bytes.
MAX_BODY = 1024 * 1024
#: Event ids remembered for deduplication (use a database table in production).
REMEMBER = 100_000


class InvalidWebhook(ValueError):
    """Missing headers, a stale timestamp or no matching signature."""


def verify(secret: str, headers: Mapping[str, str], body: bytes, tolerance: int = TOLERANCE) -> str:
    """Return the delivery's ``webhook-id`` if ``secret`` signed it, else raise."""
    h = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp = h.get("webhook-id", ""), h.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit() or "webhook-signature" not in h:
        raise InvalidWebhook("missing or malformed webhook headers")
    if abs(time.time() - int(stamp)) > tolerance:
        raise InvalidWebhook("timestamp too old or too new")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{stamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for candidate in h["webhook-signature"].split():
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return msg_id
    raise InvalidWebhook("no valid signature")


class Receiver:
    """Verifies with any of ``secrets`` and passes each new event to ``handle`` once."""

    def __init__(
        self, secrets: Sequence[str], handle: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        for secret in secrets:  # fail at start, not on the first delivery
            base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        self.secrets = list(secrets)
        self.handle = handle or (lambda event: print(json.dumps(event), flush=True))
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def receive(self, headers: Mapping[str, str], body: bytes) -> int:
        """The HTTP status to answer one delivery with."""
        msg_id = None
        for secret in self.secrets:
            try:
                msg_id = verify(secret, headers, body)
                break
            except InvalidWebhook:
                continue
        if msg_id is None:
            return 401
        with self._lock:
            if msg_id in self._seen:
                return 200  # a redelivery: acknowledged, not handled again
            self._seen[msg_id] = None
            if len(self._seen) > REMEMBER:
                self._seen.popitem(last=False)
        try:
            self.handle(json.loads(body))
        except Exception:
            with self._lock:
                self._seen.pop(msg_id, None)  # not handled: let the retry try again
            raise
        return 200


def make_server(
    receiver: Receiver, host: str = "127.0.0.1", port: int = 9000
) -> ThreadingHTTPServer:
    """An HTTP server passing every POST to ``receiver``; call ``serve_forever()``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.send_error(413)
                return
            body = self.rfile.read(length)
            try:
                status = receiver.receive(dict(self.headers.items()), body)
            except Exception as exc:  # noqa: BLE001 (a process boundary: answer 500, log it)
                self.log_error("handling failed: %r", exc)
                status = 500
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Receive and verify deepscreen webhooks.")
    parser.add_argument("--secret", action="append", required=True, help="whsec_... (repeatable)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    server = make_server(Receiver(args.secret), args.host, args.port)
    print(f"listening on http://{args.host}:{server.server_address[1]}/", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
