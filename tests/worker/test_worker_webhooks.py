"""Webhook deliveries through the plain functions, to a real HTTP receiver on loopback,
on SQLite and PostgreSQL: signing, the URL safety check, redirects, capped answers,
timeouts, retries, secret rotation, disabling and the dispatcher."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from loopback_receiver import LoopbackReceiver, Received, Reply
from sqlalchemy import delete, event, func, select
from sqlalchemy.orm import Session, sessionmaker
from test_worker_classify import register

from deepscreen.config import Settings
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageSource, Prediction
from deepscreen.db.moderation import Verdict
from deepscreen.db.session import make_engine, make_session_factory, session_scope
from deepscreen.db.webhooks import (
    DeliveryStatus,
    EndpointKind,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from deepscreen.errors import TransientError
from deepscreen.webhooks import (
    EVENT_TYPES,
    REVIEW_COMPLETED,
    VERDICT_CHANGED,
    VERDICT_CREATED,
    Target,
    UnsafeURL,
    WebhookVerificationError,
    check_url,
    emit,
    emit_many,
    new_secret,
    verify,
)
from worker.classify import classify_batch
from worker.runtime import Runtime
from worker.webhook_http import Answer, PostFailed, post
from worker.webhooks import CLAIM_MARGIN, FIRST_ATTEMPT_GRACE, deliver, dispatch

Factory = sessionmaker[Session]


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    """Loopback allowed (tests only), short timeouts, a 1 KiB answer cap."""
    return replace(
        settings,
        webhook_allow_networks=("127.0.0.0/8",),
        webhook_connect_timeout=1.0,
        webhook_read_timeout=1.0,
        webhook_max_response_bytes=1024,
    )


@pytest.fixture
def factory(hook_settings: Settings) -> Iterator[Factory]:
    """Sessions on this module's database, with no endpoints or events left by other
    tests (emitting goes to every active endpoint)."""
    engine = make_engine(hook_settings)
    sessions = make_session_factory(engine)
    with session_scope(sessions) as session:
        session.execute(delete(WebhookEvent))
        session.execute(delete(WebhookEndpoint))
    yield sessions
    engine.dispose()


@pytest.fixture
def receiver() -> Iterator[LoopbackReceiver]:
    r = LoopbackReceiver()
    yield r
    r.stop()


def add_endpoint(
    factory: Factory, url: str, *, types: Sequence[str] = EVENT_TYPES, **fields: Any
) -> tuple[int, str]:
    """A subscription to ``types`` at ``url``; returns its id and secret."""
    secret = fields.pop("secret", None) or new_secret()
    with session_scope(factory) as session:
        endpoint = WebhookEndpoint(url=url, secret=secret, event_types=list(types), **fields)
        session.add(endpoint)
        session.flush()
        return endpoint.id, secret


def emit_event(factory: Factory, event_type: str = VERDICT_CREATED, **data: Any) -> list[int]:
    with session_scope(factory) as session:
        return emit(session, event_type, {"image_id": 1, **data}, now=utcnow())


def row(factory: Factory, delivery_id: int) -> WebhookDelivery:
    with session_scope(factory) as session:
        return session.get_one(WebhookDelivery, delivery_id)


def endpoint_row(factory: Factory, endpoint_id: int) -> WebhookEndpoint:
    with session_scope(factory) as session:
        return session.get_one(WebhookEndpoint, endpoint_id)


def checked(secret: str, got: Received, **kwargs: Any) -> str:
    """The delivery's id if ``secret`` signed it (timestamp taken as current)."""
    kwargs.setdefault("now", int(got.headers["webhook-timestamp"]))
    return verify(secret, got.headers, got.body, **kwargs)


def test_every_event_type_is_delivered_signed_and_verified(
    factory: Factory, hook_settings: Settings, receiver: LoopbackReceiver
) -> None:
    # Given an endpoint subscribed to every event type, by host name
    url = receiver.url.replace("127.0.0.1", "localhost")
    _, secret = add_endpoint(factory, url)
    ids = [i for t in EVENT_TYPES for i in emit_event(factory, t, note=t)]
    assert len(ids) == 3
    # When each delivery is attempted
    outcomes = [deliver(i, settings=hook_settings, session_factory=factory) for i in ids]
    # Then the receiver got three POSTs, each verifying with the secret (and current)
    assert [o.result for o in outcomes] == ["succeeded"] * 3
    got = receiver.received()
    assert len(got) == 3
    with session_scope(factory) as session:
        events = {e.event_id: e for e in session.scalars(select(WebhookEvent))}
    for request in got:
        msg_id = verify(secret, request.headers, request.body)
        document = json.loads(request.body)
        assert document["id"] == msg_id and msg_id in events
        assert document["type"] == events[msg_id].type == document["data"]["note"]
        assert document["timestamp"] and document["data"]["image_id"] == 1
        assert request.headers["host"] == f"localhost:{receiver.port}"
        assert request.headers["content-type"] == "application/json"
        assert request.path == "/hook"
    assert sorted(json.loads(r.body)["type"] for r in got) == sorted(EVENT_TYPES)
    # ... and each delivery is logged as succeeded at the first attempt
    for delivery_id in ids:
        d = row(factory, delivery_id)
        assert d.status is DeliveryStatus.SUCCEEDED and d.attempts == 1
        assert d.last_status_code == 200 and d.last_error is None
        assert d.delivered_at is not None and d.next_attempt_at is None
        assert d.last_latency_ms is not None and 0 < d.last_latency_ms < 5000
    # When one is delivered again (a redelivered message): nothing is sent
    assert deliver(ids[0], settings=hook_settings, session_factory=factory).result == "skipped"
    assert len(receiver.received()) == 3


def test_a_failed_attempt_is_retried_later_with_the_same_id_and_body(
    factory: Factory, hook_settings: Settings, receiver: LoopbackReceiver
) -> None:
    # Given a receiver that answers 500 once, then 204
    answers = iter([Reply(500, b"  database\n is down  "), Reply(204, b"")])
    receiver.reply = lambda _r: next(answers)
    _, secret = add_endpoint(factory, receiver.url)
    [delivery_id] = emit_event(factory)
    t0 = utcnow()
    # When the first attempt fails
    first = deliver(delivery_id, settings=hook_settings, session_factory=factory, now=t0)
    # Then the next one is due after the first wait of the schedule, with jitter
    assert first.result == "retry" and first.status_code == 500
    d = row(factory, delivery_id)
    assert d.status is DeliveryStatus.PENDING and d.attempts == 1
    assert d.last_status_code == 500 and d.last_error == "HTTP 500: database is down"
    assert d.next_attempt_at is not None
    wait = (d.next_attempt_at - t0).total_seconds()
    assert 5 * 0.8 <= wait <= 5 * 1.2
    assert endpoint_row(factory, d.endpoint_id).failing_since == t0
    # ... and is not sent before then
    early = deliver(delivery_id, settings=hook_settings, session_factory=factory, now=t0)
    assert early.result == "skipped" and len(receiver.received()) == 1
    # When it is due
    later = t0 + timedelta(seconds=wait)
    second = deliver(delivery_id, settings=hook_settings, session_factory=factory, now=later)
    # Then it succeeds with the same id and body; the endpoint is no longer failing
    assert second.result == "succeeded" and second.attempts == 2
    a, b = receiver.received()
    assert a.body == b.body
    assert checked(secret, a) == checked(secret, b) == a.headers["webhook-id"]
    assert endpoint_row(factory, d.endpoint_id).failing_since is None


def test_a_delivery_fails_for_good_after_the_schedule(
    factory: Factory, hook_settings: Settings, receiver: LoopbackReceiver
) -> None:
    receiver.reply = lambda _r: Reply(503, b"")
    add_endpoint(factory, receiver.url)
    [delivery_id] = emit_event(factory)
    now = utcnow()
    results = []
    for _ in range(3):
        outcome = deliver(
            delivery_id,
            settings=hook_settings,
            session_factory=factory,
            now=now,
            retry_schedule=(1, 1),
        )
        results.append(outcome.result)
        now += timedelta(seconds=2)
    # The first attempt plus one per entry of the schedule, then failed
    assert results == ["retry", "retry", "failed"]
    d = row(factory, delivery_id)
    assert d.status is DeliveryStatus.FAILED and d.attempts == 3
    assert d.next_attempt_at is None and d.last_error == "HTTP 503"
    assert len(receiver.received()) == 3


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]:9/hook",
        "http://10.1.2.3/hook",
        "http://172.16.0.1/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://[fe80::1]/hook",
        "http://100.64.0.1/hook",  # carrier-grade NAT
        "http://0.0.0.0/hook",
        "http://[::ffff:127.0.0.1]/hook",
    ],
)
def test_non_public_addresses_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(UnsafeURL, match="non-public address"):
        check_url(url)


def test_the_allow_list_admits_only_its_networks() -> None:
    target = check_url("http://localhost:8080/a?b=1", allow_networks=("127.0.0.0/8",))
    assert (target.address, target.host, target.port, target.path) == (
        "127.0.0.1",
        "localhost",
        8080,
        "/a?b=1",
    )
    for url in ("http://169.254.169.254/", "http://10.0.0.1/", "http://[::1]/"):
        with pytest.raises(UnsafeURL):
            check_url(url, allow_networks=("127.0.0.0/8",))
    for url in ("ftp://example.com/", "http://user:pw@example.com/", "file:///etc/passwd"):
        with pytest.raises(UnsafeURL):
            check_url(url)


def test_a_loopback_receiver_is_refused_without_the_allow_list(
    factory: Factory, hook_settings: Settings, receiver: LoopbackReceiver
) -> None:
    # Given the production default: no allow-list
    strict = replace(hook_settings, webhook_allow_networks=())
    add_endpoint(factory, receiver.url)
    [delivery_id] = emit_event(factory)
    # When the delivery is attempted
    outcome = deliver(delivery_id, settings=strict, session_factory=factory)
    # Then nothing is sent and the delivery fails for good with the reason
    assert outcome.result == "failed"
    assert receiver.received() == []
    d = row(factory, delivery_id)
    assert d.status is DeliveryStatus.FAILED and d.attempts == 1
    assert d.last_error is not None and "127.0.0.1, a non-public address" in d.last_error
    assert d.last_status_code is None


def test_redirects_are_not_followed(
    factory: Factory, hook_settings: Settings, receiver: LoopbackReceiver
) -> None:
    # Given a receiver that redirects to another one
    elsewhere = LoopbackReceiver()
    try:
        receiver.reply = lambda _r: Reply(307, b"", {"Location": elsewhere.url})
        add_endpoint(factory, receiver.url)
        [delivery_id] = emit_event(factory)
        # When the delivery is attempted
        outcome = deliver(delivery_id, settings=hook_settings, session_factory=factory)
        # Then the redirect is a failed attempt, and the other receiver got nothing
        assert outcome.result == "retry" and outcome.status_code == 307
        assert elsewhere.received() == []
        d = row(factory, delivery_id)
        assert d.last_error == f"redirect not followed (HTTP 307 to {elsewhere.url})"
    finally:
        elsewhere.stop()


def test_the_answer_is_read_up_to_the_cap_only(receiver: LoopbackReceiver) -> None:
    # Given a receiver whose answer never ends
    receiver.reply = lambda _r: Reply(200, b"x" * 65536, stream=True)
    target = check_url(receiver.url, allow_networks=("127.0.0.0/8",))
    # When a delivery is posted with a 1 KiB cap
    answer = post(target, {}, b"{}", connect_timeout=1, read_timeout=1, max_bytes=1024)
    # Then 1 KiB is read and the connection dropped
    assert answer.status == 200 and len(answer.body) == 1024 and answer.truncated
    assert answer.latency_ms < 1000


def test_a_long_error_answer_is_capped_in_the_log(
    factory: Factory, hook_settings: Settings, receiver: LoopbackReceiver
) -> None:
    receiver.reply = lambda _r: Reply(400, b"no " * 100_000)
    add_endpoint(factory, receiver.url)
    [delivery_id] = emit_event(factory)
    outcome = deliver(delivery_id, settings=hook_settings, session_factory=factory)
    assert outcome.result == "retry"
    error = row(factory, delivery_id).last_error or ""
    assert error.startswith("HTTP 400: no no") and len(error) <= 220


def test_a_receiver_slower_than_the_read_timeout_is_a_failed_attempt(
    factory: Factory, hook_settings: Settings, receiver: LoopbackReceiver
) -> None:
    receiver.reply = lambda _r: Reply(200, delay=3)
    quick = replace(hook_settings, webhook_read_timeout=0.3)
    add_endpoint(factory, receiver.url)
    [delivery_id] = emit_event(factory)
    outcome = deliver(delivery_id, settings=quick, session_factory=factory)
    assert outcome.result == "retry"
    d = row(factory, delivery_id)
    assert d.last_error == "no answer within 0.3 s (read timeout)"
    assert d.last_status_code is None
    assert d.last_latency_ms is not None and 250 < d.last_latency_ms < 2500


def test_a_refused_connection_is_a_failed_attempt(
    factory: Factory, hook_settings: Settings, receiver: LoopbackReceiver
) -> None:
    add_endpoint(factory, receiver.url)
    receiver.stop()
    [delivery_id] = emit_event(factory)
    outcome = deliver(delivery_id, settings=hook_settings, session_factory=factory)
    assert outcome.result == "retry"
    assert row(factory, delivery_id).last_error == "connection refused"


def test_while_a_secret_rotates_deliveries_carry_both_signatures(
    factory: Factory, hook_settings: Settings, receiver: LoopbackReceiver
) -> None:
    # Given an endpoint whose old secret still signs for an hour
    old, new = new_secret(), new_secret()
    rotated = utcnow()
    add_endpoint(
        factory,
        receiver.url,
        secret=new,
        previous_secret=old,
        previous_secret_expires_at=rotated + timedelta(hours=1),
    )
    first, second = emit_event(factory), emit_event(factory)
    # When one delivery goes out during the overlap and one after it
    deliver(first[0], settings=hook_settings, session_factory=factory, now=rotated)
    after = rotated + timedelta(hours=1, seconds=1)
    deliver(second[0], settings=hook_settings, session_factory=factory, now=after)
    during, later = receiver.received()
    # Then the first verifies with either secret, the second with the new one only
    assert len(during.headers["webhook-signature"].split()) == 2
    assert checked(old, during) == checked(new, during)
    assert len(later.headers["webhook-signature"].split()) == 1
    assert checked(new, later)
    with pytest.raises(WebhookVerificationError):
        checked(old, later)


def test_an_endpoint_failing_too_long_is_disabled_with_the_reason(
    factory: Factory, hook_settings: Settings, receiver: LoopbackReceiver
) -> None:
    # Given an endpoint that answers 500, allowed to fail for 60 s
    receiver.reply = lambda _r: Reply(500, b"broken")
    settings = replace(hook_settings, webhook_disable_after=60)
    endpoint_id, _ = add_endpoint(factory, receiver.url)
    ids = [emit_event(factory)[0] for _ in range(3)]
    t0 = utcnow()
    # When it fails at t0 and 30 s later
    deliver(ids[0], settings=settings, session_factory=factory, now=t0)
    deliver(ids[1], settings=settings, session_factory=factory, now=t0 + timedelta(seconds=30))
    # Then it is still active, failing since t0
    e = endpoint_row(factory, endpoint_id)
    assert e.active and e.failing_since == t0 and e.disabled_reason is None
    # When it fails again after more than 60 s
    late = t0 + timedelta(seconds=61)
    outcome = deliver(ids[2], settings=settings, session_factory=factory, now=late)
    # Then it is disabled with the reason, and its pending deliveries have failed
    assert outcome.endpoint_disabled and outcome.result == "failed"
    e = endpoint_row(factory, endpoint_id)
    assert not e.active and e.disabled_at == late
    assert e.disabled_reason == (
        f"failing since {t0:%Y-%m-%d %H:%M:%S} UTC: last error HTTP 500: broken"
    )
    logged = [row(factory, i) for i in ids]
    assert {d.status for d in logged} == {DeliveryStatus.FAILED}
    assert logged[0].last_error == "endpoint disabled; before: HTTP 500: broken"
    assert logged[2].last_error == "HTTP 500: broken"
    assert all(d.next_attempt_at is None for d in logged)
    # ... new events no longer go there, and an old message for it sends nothing
    assert emit_event(factory) == []
    sent = len(receiver.received())
    assert deliver(ids[0], settings=settings, session_factory=factory).result == "skipped"
    assert len(receiver.received()) == sent == 3


def test_a_delivery_to_an_endpoint_disabled_meanwhile_fails_unsent(
    factory: Factory, hook_settings: Settings, receiver: LoopbackReceiver
) -> None:
    endpoint_id, _ = add_endpoint(factory, receiver.url)
    [delivery_id] = emit_event(factory)
    with session_scope(factory) as session:
        session.get_one(WebhookEndpoint, endpoint_id).active = False
    outcome = deliver(delivery_id, settings=hook_settings, session_factory=factory)
    assert outcome.result == "failed" and outcome.error == "endpoint disabled"
    assert receiver.received() == []
    assert row(factory, delivery_id).status is DeliveryStatus.FAILED


def test_the_dispatcher_picks_due_deliveries_only(factory: Factory) -> None:
    # Given deliveries in every state
    now = utcnow()
    endpoint_id, _ = add_endpoint(factory, "http://127.0.0.1:9/")

    def make(status: DeliveryStatus, attempts: int, due: datetime | None) -> int:
        with session_scope(factory) as session:
            event = WebhookEvent(
                event_id=f"msg_{utcnow().timestamp()}_{attempts}_{status}_{due}",
                type=VERDICT_CREATED,
                payload={},
            )
            session.add(event)
            session.flush()
            d = WebhookDelivery(
                event_id=event.id,
                endpoint_id=endpoint_id,
                status=status,
                attempts=attempts,
                next_attempt_at=due,
            )
            session.add(d)
            session.flush()
            return d.id

    s = timedelta(seconds=1)
    retry_due = make(DeliveryStatus.PENDING, 1, now - 10 * s)
    retry_due_later = make(DeliveryStatus.PENDING, 2, now - 1 * s)
    make(DeliveryStatus.PENDING, 1, now + 30 * s)  # a retry not yet due, or in flight
    make(DeliveryStatus.PENDING, 0, now - 10 * s)  # its own message is on its way
    lost = make(DeliveryStatus.PENDING, 0, now - (FIRST_ATTEMPT_GRACE + 1) * s)
    make(DeliveryStatus.SUCCEEDED, 1, None)
    make(DeliveryStatus.FAILED, 7, None)
    # Then the dispatcher returns the due ones, oldest first
    assert dispatch(session_factory=factory, now=now) == [lost, retry_due, retry_due_later]
    assert dispatch(session_factory=factory, now=now, limit=1) == [lost]


def test_concurrent_attempts_of_one_delivery_send_it_once(
    factory: Factory, hook_settings: Settings, receiver: LoopbackReceiver
) -> None:
    # Given a slow receiver and a delivery whose message arrived twice
    receiver.reply = lambda _r: Reply(200, delay=0.5)
    add_endpoint(factory, receiver.url)
    [delivery_id] = emit_event(factory)
    results: list[str] = []

    def attempt() -> None:
        results.append(deliver(delivery_id, settings=hook_settings, session_factory=factory).result)

    # When both copies are worked on at once
    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # Then it was sent once
    assert sorted(results) == ["skipped", "succeeded"]
    assert len(receiver.received()) == 1


class _Crash(BaseException):
    """A worker killed between the POST and recording its answer."""


def test_a_worker_dying_mid_attempt_means_a_resend_with_the_same_id(
    factory: Factory, hook_settings: Settings, receiver: LoopbackReceiver
) -> None:
    _, secret = add_endpoint(factory, receiver.url)
    [delivery_id] = emit_event(factory)

    def post_then_die(*args: Any, **kwargs: Any) -> Answer:
        post(*args, **kwargs)
        raise _Crash

    # Given an attempt whose worker died after the receiver got the POST
    with pytest.raises(_Crash):
        deliver(delivery_id, settings=hook_settings, session_factory=factory, http=post_then_die)
    # Then the dispatcher leaves it alone while the attempt could still be running
    assert dispatch(session_factory=factory) == []
    # ... and sends it again once the claim has run out
    claim = hook_settings.webhook_connect_timeout + hook_settings.webhook_read_timeout
    later = utcnow() + timedelta(seconds=claim + CLAIM_MARGIN + 1)
    assert dispatch(session_factory=factory, now=later) == [delivery_id]
    again = deliver(delivery_id, settings=hook_settings, session_factory=factory, now=later)
    assert again.result == "succeeded" and again.attempts == 2
    # The receiver got it twice, with one id: its deduplication keeps one
    got = receiver.received()
    assert len(got) == 2
    assert len({checked(secret, r) for r in got}) == 1


def test_a_callback_endpoint_gets_the_events_of_its_image_only(
    factory: Factory, hook_settings: Settings, receiver: LoopbackReceiver
) -> None:
    with session_scope(factory) as session:
        image = Image(bucket="b", key=f"k{utcnow().timestamp()}", etag="e", source=ImageSource.SCAN)
        session.add(image)
        session.flush()
        image_id = image.id
    add_endpoint(
        factory,
        receiver.url,
        types=[VERDICT_CREATED, REVIEW_COMPLETED, VERDICT_CHANGED],
        kind=EndpointKind.CALLBACK,
        image_id=image_id,
    )
    with session_scope(factory) as session:
        other = emit(session, VERDICT_CREATED, {"image_id": 0}, now=utcnow(), image_id=None)
        mine = emit(
            session, REVIEW_COMPLETED, {"image_id": image_id}, now=utcnow(), image_id=image_id
        )
    assert other == [] and len(mine) == 1
    assert deliver(mine[0], settings=hook_settings, session_factory=factory).result == "succeeded"
    assert json.loads(receiver.received()[0].body)["data"] == {"image_id": image_id}


def test_a_receiver_down_for_a_while_gets_every_event_once_it_is_back(
    factory: Factory, hook_settings: Settings, receiver: LoopbackReceiver
) -> None:
    # Given five events for a receiver that is down, and a short retry schedule
    _, secret = add_endpoint(factory, receiver.url)
    receiver.stop()
    ids = [emit_event(factory, n=n)[0] for n in range(5)]
    schedule = (0.2,) * 6

    def attempt(delivery_ids: Sequence[int]) -> None:
        for i in delivery_ids:
            deliver(i, settings=hook_settings, session_factory=factory, retry_schedule=schedule)

    def pending() -> int:
        return sum(row(factory, i).status is DeliveryStatus.PENDING for i in ids)

    # When the first attempts fail and the dispatcher retries them, and the receiver
    # comes back after a while
    attempt(ids)
    deadline = time.monotonic() + 30
    down_until = time.monotonic() + 0.6
    while pending() and time.monotonic() < deadline:
        if not receiver.running and time.monotonic() > down_until:
            receiver.start()
        attempt(dispatch(session_factory=factory))
        time.sleep(0.05)
    # Then every event arrived, each once, verified, after some failed attempts
    assert pending() == 0
    logged = [row(factory, i) for i in ids]
    assert {d.status for d in logged} == {DeliveryStatus.SUCCEEDED}
    assert all(d.attempts >= 2 for d in logged)
    got = receiver.received()
    received_ids = [checked(secret, r) for r in got]
    assert len(received_ids) == len(set(received_ids)) == 5
    assert sorted(json.loads(r.body)["data"]["n"] for r in got) == list(range(5))


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for ``localhost`` it signed: (ca.pem, cert.pem, key.pem)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True)

    run(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=deepscreen test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign",
    )  # fmt: skip
    run("req", *ec, "-keyout", "key.pem", "-out", "cert.csr", "-subj", "/CN=localhost")
    (folder / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    run(
        "x509", "-req", "-in", "cert.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "cert.pem", "-days", "1", "-extfile", "ext.cnf",
    )  # fmt: skip
    return folder / "ca.pem", folder / "cert.pem", folder / "key.pem"


def test_https_checks_the_certificate_for_the_host_name_while_connecting_to_the_address(
    tmp_path: Path,
) -> None:
    # Given an https receiver on 127.0.0.1 with a certificate for localhost
    ca, cert, key = _certificates(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []

    def sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)

    context.sni_callback = sni  # type: ignore[assignment]
    receiver = LoopbackReceiver(tls=context)
    try:
        port = receiver.port
        target = Target("https", "localhost", port, "/hook", "127.0.0.1")
        # When a delivery names localhost
        answer = post(
            target, {}, b"{}", connect_timeout=2, read_timeout=2, max_bytes=10, ca_certs=str(ca)
        )
        # Then it is accepted: SNI and Host name localhost
        assert answer.status == 200
        assert names == ["localhost"]
        assert receiver.received()[0].headers["host"] == f"localhost:{port}"
        # When the URL's host is not the certificate's, or the CA is not trusted
        for wrong, trust in (("evil.example", str(ca)), ("localhost", None)):
            bad = Target("https", wrong, port, "/hook", "127.0.0.1")
            with pytest.raises(PostFailed, match="TLS error"):
                post(
                    bad, {}, b"{}", connect_timeout=2, read_timeout=2, max_bytes=10, ca_certs=trust
                )
        # Then nothing more was received
        assert len(receiver.received()) == 1
    finally:
        receiver.stop()


def test_new_verdicts_emit_verdict_created_once(
    factory: Factory,
    hook_settings: Settings,
    receiver: LoopbackReceiver,
    runtime: Runtime,
    folder: Path,
    make_images: Callable[..., list[str]],
) -> None:
    # Given an endpoint for verdict.created, one for review.completed only, and four
    # images plus three corrupt files
    _, secret = add_endpoint(factory, receiver.url, types=[VERDICT_CREATED])
    add_endpoint(factory, receiver.url + "/reviews", types=[REVIEW_COMPLETED])
    make_images(folder, 4)
    ids = register(runtime, folder)
    sent: list[int] = []

    def enqueue(delivery_ids: Sequence[int]) -> int:
        sent.extend(delivery_ids)
        return len(delivery_ids)

    # When they are classified
    outcome = classify_batch(ids, runtime=runtime, enqueue_deliveries=enqueue)
    # Then one delivery per new verdict was enqueued after the commit
    assert len(outcome.classified) == 4 and len(outcome.failed) == 3
    assert sorted(sent) == sorted(outcome.deliveries) and len(sent) == 4
    # When the batch is delivered again (a redelivered message)
    again = classify_batch(ids, runtime=runtime, enqueue_deliveries=enqueue)
    # Then no verdict is written, so no event is emitted
    assert again.deliveries == [] and len(sent) == 4
    # When the deliveries are made
    for delivery_id in sent:
        outcome_ = deliver(delivery_id, settings=hook_settings, session_factory=factory)
        assert outcome_.result == "succeeded"
    # Then the receiver has one verified verdict.created per classified image
    got = receiver.received()
    assert [r.path for r in got] == ["/hook"] * 4
    documents = [json.loads(r.body) for r in got if checked(secret, r)]
    by_image = {d["data"]["image_id"]: d for d in documents}
    assert sorted(by_image) == sorted(outcome.classified)
    with session_scope(factory) as session:
        for image_id, document in by_image.items():
            assert document["type"] == VERDICT_CREATED
            data = document["data"]
            image = session.get_one(Image, image_id)
            verdict = session.scalars(select(Verdict).where(Verdict.image_id == image_id)).one()
            prediction = session.get_one(Prediction, verdict.prediction_id)
            assert data == {
                "image_id": image_id,
                "bucket": image.bucket,
                "key": image.key,
                "etag": image.etag,
                "sha256": image.sha256,
                "score": prediction.score,
                "label": prediction.label,
                "reason": prediction.reason,
                "faces": prediction.faces,
                "threshold": prediction.threshold,
                "model_version": runtime.classifier.version,
                "final_label": verdict.final_label,
                "review_state": verdict.state.value,
                "classified_at": data["classified_at"],
            }
            assert image.sha256 and len(image.sha256) == 64
            assert datetime.fromisoformat(data["classified_at"]) == verdict.created_at


def test_deliveries_the_broker_refused_are_left_to_the_dispatcher(
    factory: Factory,
    runtime: Runtime,
    folder: Path,
    make_images: Callable[..., list[str]],
) -> None:
    add_endpoint(factory, "http://127.0.0.1:9/hook", types=[VERDICT_CREATED])
    make_images(folder, 2, corrupt=False)
    ids = register(runtime, folder)

    def broker_down(_ids: Sequence[int]) -> int:
        raise TransientError("broker unavailable")

    # When the deliveries cannot be enqueued, the batch still succeeds
    outcome = classify_batch(ids, runtime=runtime, enqueue_deliveries=broker_down)
    assert len(outcome.classified) == 2 and len(outcome.deliveries) == 2
    # ... and the dispatcher sends them once their own message is overdue
    later = utcnow() + timedelta(seconds=FIRST_ATTEMPT_GRACE + 1)
    assert sorted(dispatch(session_factory=factory, now=later)) == sorted(outcome.deliveries)


def test_a_batch_of_events_costs_the_same_few_statements_however_many_images(
    factory: Factory,
) -> None:
    # Given a subscription, and a callback for one of 10 images
    with session_scope(factory) as session:
        images = [
            Image(
                bucket="b",
                key=f"batch-{utcnow().timestamp()}-{i}",
                etag="e",
                source=ImageSource.API,
            )
            for i in range(10)
        ]
        session.add_all(images)
        session.flush()
        ids = [image.id for image in images]
    add_endpoint(factory, "https://subscriber.example/hook", types=[VERDICT_CREATED])
    add_endpoint(
        factory,
        "https://caller.example/cb",
        types=[VERDICT_CREATED],
        kind=EndpointKind.CALLBACK,
        image_id=ids[3],
    )
    engine = factory.kw["bind"]
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if not statement.startswith("BEGIN"):  # SQLite's, sent as a statement
            statements.append(statement.split(None, 1)[0])

    def emitted(items: list[tuple[int | None, dict[str, Any]]]) -> list[int]:
        statements.clear()
        event.listen(engine, "before_cursor_execute", count)
        try:
            with session_scope(factory) as session:
                return emit_many(session, VERDICT_CREATED, items, now=utcnow())
        finally:
            event.remove(engine, "before_cursor_execute", count)

    # When one event is emitted, then ten in one call
    one = emitted([(ids[0], {"image_id": ids[0]})])
    alone = list(statements)
    ten = emitted([(i, {"image_id": i}) for i in ids])
    # Then the ten cost what the one did: one query for the endpoints, one insert of
    # events and one of deliveries
    assert alone == ["SELECT", "INSERT", "INSERT"], alone
    assert statements == alone, statements
    # And each image's event went to the subscription, the callback's also to its caller
    assert len(one) == 1 and len(ten) == 11
    with session_scope(factory) as session:
        per_event = session.execute(
            select(WebhookEvent.image_id, func.count(WebhookDelivery.id))
            .join(WebhookDelivery, WebhookDelivery.event_id == WebhookEvent.id)
            .where(WebhookDelivery.id.in_(ten))
            .group_by(WebhookEvent.image_id)
        ).all()
    assert dict(per_event) == {i: 2 if i == ids[3] else 1 for i in ids}
