"""One webhook POST: to the checked address, never redirected, answer capped.

The connection goes to the address `deepscreen.webhooks.check_url` resolved and
checked, so a DNS answer that changes between the check and the request cannot
point a delivery somewhere else. The request still names the URL's host: in the
``Host`` header and, for https, in SNI and the certificate check.

urllib3 (a dependency of botocore) does the HTTP; its errors become `PostFailed`
with a short reason for the delivery log (never a header, so never a signature).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from deepscreen.webhooks import Target

USER_AGENT = "deepscreen-webhooks/1"


class PostFailed(Exception):
    """No HTTP answer: refused, timed out, TLS or protocol error."""

    def __init__(self, reason: str, latency_ms: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.latency_ms = latency_ms


@dataclass(frozen=True)
class Answer:
    status: int
    #: At most ``max_bytes`` of the answer's body.
    body: bytes
    #: The receiver sent more than ``max_bytes`` (the rest was never read).
    truncated: bool
    #: ``Location`` of a redirect (not followed).
    location: str | None
    latency_ms: float


class Poster(Protocol):
    """What `worker.webhooks.deliver` sends with; `post` in production."""

    def __call__(
        self,
        target: Target,
        headers: dict[str, str],
        body: bytes,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_bytes: int,
    ) -> Answer: ...


def host_header(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


def post(
    target: Target,
    headers: dict[str, str],
    body: bytes,
    *,
    connect_timeout: float,
    read_timeout: float,
    max_bytes: int,
    ca_certs: str | None = None,
) -> Answer:
    """POST ``body`` to ``target.address``; raise `PostFailed` when nothing answers.

    ``ca_certs`` replaces the system's trusted certificates (tests use their own CA).
    """
    timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
    pool: urllib3.HTTPConnectionPool
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            target.address,
            target.port,
            timeout=timeout,
            retries=False,
            maxsize=1,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_certs,
        )
    else:
        pool = urllib3.HTTPConnectionPool(
            target.address, target.port, timeout=timeout, retries=False, maxsize=1
        )
    sent = {**headers, "Host": host_header(target), "User-Agent": USER_AGENT}
    started = time.perf_counter()
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body,
            headers=sent,
            redirect=False,
            assert_same_host=False,
            preload_content=False,
            decode_content=False,
            release_conn=False,
        )
        try:
            # One byte more than the cap tells whether there was more; the rest is
            # never read: closing drops the connection.
            data = response.read(max_bytes + 1, decode_content=False)
        finally:
            response.close()
    except HTTPError as exc:
        raise PostFailed(_reason(exc, connect_timeout, read_timeout), _ms(started)) from exc
    except OSError as exc:
        raise PostFailed(f"connection failed: {exc}"[:300], _ms(started)) from exc
    finally:
        pool.close()
    return Answer(
        status=response.status,
        body=data[:max_bytes],
        truncated=len(data) > max_bytes,
        location=response.headers.get("Location"),
        latency_ms=_ms(started),
    )


def _reason(exc: HTTPError, connect_timeout: float, read_timeout: float) -> str:
    # NewConnectionError first: urllib3 makes it a subclass of ConnectTimeoutError.
    if isinstance(exc, NewConnectionError):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, TimeoutError):
            return f"connect timed out after {connect_timeout:g} s"
        return f"connection failed: {cause or exc}"[:300]
    if isinstance(exc, ConnectTimeoutError):
        return f"connect timed out after {connect_timeout:g} s"
    if isinstance(exc, ReadTimeoutError):
        return f"no answer within {read_timeout:g} s (read timeout)"
    if isinstance(exc, SSLError):
        return f"TLS error: {exc}"[:300]
    if isinstance(exc, ProtocolError):
        return f"connection broken: {exc}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
