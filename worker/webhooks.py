"""Webhook deliveries: one attempt of one delivery, and the dispatcher of due ones.

`deliver` goes through two short transactions with the network call between them:

1. claim: lock the row (``SKIP LOCKED`` on PostgreSQL), skip it unless it is pending
   and due, count the attempt and push ``next_attempt_at`` past the longest the
   attempt can take, so neither the dispatcher nor a redelivered message sends it
   again while it is in flight;
2. POST the signed event to the address the URL safety check resolved;
3. record the answer: succeeded on a 2xx; otherwise the next retry from the schedule
   (with jitter) or failed when the schedule is used up. An endpoint failing for
   longer than ``webhook_disable_after`` is disabled with the reason, and its
   pending deliveries fail.

Delivery is at least once: a worker that dies after the POST sends it again when
the claim runs out. The ``webhook-id`` header (the event id) is the receiver's
idempotency key, and the body is the same bytes on every attempt.

`dispatch` finds the pending deliveries that are due, for the task to enqueue: every
retry, and any first attempt whose own message was lost.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from deepscreen.config import Settings
from deepscreen.db.base import utcnow
from deepscreen.db.session import session_scope
from deepscreen.db.webhooks import DeliveryStatus, WebhookDelivery, WebhookEndpoint, WebhookEvent
from deepscreen.webhooks import UnsafeURL, check_url, headers, signing_secrets
from worker.webhook_http import Answer, Poster, PostFailed, post

logger = logging.getLogger(__name__)

#: Deliveries one dispatcher run hands out at most; the next run takes the rest.
DISPATCH_LIMIT = 1000
#: Seconds a claim outlasts the connect and read timeouts.
CLAIM_MARGIN = 10.0
#: A delivery due this many seconds from now counts as due (clocks of the emitting
#: host and this one may differ a little).
CLOCK_SKEW = 2.0
#: A first attempt has a message of its own (sent after the emitting commit); the
#: dispatcher sends it only when that message has not been acted on for this long.
FIRST_ATTEMPT_GRACE = 15.0
#: Each retry waits its scheduled time stretched by a factor in this range.
JITTER = (0.8, 1.2)
#: Characters of an error (and of a receiver's answer) kept in the delivery log.
MAX_ERROR_CHARS = 500
ANSWER_SNIPPET_CHARS = 200

ENDPOINT_DISABLED = "endpoint disabled"


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one `deliver` call did."""

    delivery_id: int
    #: ``succeeded``, ``retry`` (pending, next attempt scheduled), ``failed`` or
    #: ``skipped`` (not pending, not due, or being delivered by someone else).
    result: str
    attempts: int = 0
    status_code: int | None = None
    error: str | None = None
    latency_ms: float | None = None
    next_attempt_at: datetime | None = None
    endpoint_disabled: bool = False

    def summary(self) -> dict[str, object]:
        out = asdict(self)
        out["next_attempt_at"] = self.next_attempt_at.isoformat() if self.next_attempt_at else None
        return out


@dataclass(frozen=True)
class _Claim:
    delivery_id: int
    endpoint_id: int
    url: str
    secrets: list[str]
    msg_id: str
    body: bytes
    attempts: int


@dataclass(frozen=True)
class _Attempt:
    """The result of the network part of one attempt."""

    status_code: int | None = None
    error: str | None = None
    latency_ms: float | None = None
    #: No retry will help (the URL is refused).
    permanent: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def body_of(event: WebhookEvent) -> bytes:
    """The bytes POSTed for ``event``: its payload plus its id, the same on every attempt."""
    document = {"id": event.event_id, **event.payload}
    return json.dumps(document, separators=(",", ":")).encode()


def deliver(
    delivery_id: int,
    *,
    settings: Settings,
    session_factory: sessionmaker[Session],
    now: datetime | None = None,
    http: Poster = post,
    retry_schedule: Sequence[float] | None = None,
    rand: Callable[[], float] = random.random,
) -> DeliveryOutcome:
    """Make one attempt of delivery ``delivery_id`` and record its outcome.

    Network failures are recorded, never raised; database errors surface as
    `DatabaseUnavailable` (transient). ``now`` fixes the clock (tests); the retry
    schedule defaults to ``settings.webhook_retry_schedule``.
    """
    schedule = tuple(settings.webhook_retry_schedule if retry_schedule is None else retry_schedule)
    started = now or utcnow()
    claim = _claim(delivery_id, session_factory, settings, started)
    if isinstance(claim, DeliveryOutcome):
        return claim  # nothing to send
    attempt = _attempt(claim, settings, started, http)
    return _record(claim, attempt, session_factory, settings, now or utcnow(), schedule, rand)


def _claim(
    delivery_id: int, session_factory: sessionmaker[Session], settings: Settings, now: datetime
) -> _Claim | DeliveryOutcome:
    """Count the attempt and keep others off the delivery while it is in flight; or the
    outcome of not sending it."""
    with session_scope(session_factory) as session:
        delivery = session.scalar(
            select(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .with_for_update(skip_locked=True)
        )
        if delivery is None:
            # Gone, or locked by a worker claiming or recording it right now.
            return _skipped(delivery_id, "not found or busy")
        if delivery.status is not DeliveryStatus.PENDING:
            return _skipped(delivery_id, f"already {delivery.status.value}", delivery)
        due = delivery.next_attempt_at
        if due is not None and due > now + timedelta(seconds=CLOCK_SKEW):
            return _skipped(delivery_id, f"not due before {due.isoformat()}", delivery)
        endpoint = session.get_one(WebhookEndpoint, delivery.endpoint_id)
        if not endpoint.active:
            _finish(delivery, ENDPOINT_DISABLED)
            logger.info("delivery %d: %s", delivery_id, ENDPOINT_DISABLED)
            return DeliveryOutcome(
                delivery_id, DeliveryStatus.FAILED.value, delivery.attempts, error=ENDPOINT_DISABLED
            )
        event = session.get_one(WebhookEvent, delivery.event_id)
        delivery.attempts += 1
        delivery.last_attempt_at = now
        in_flight = settings.webhook_connect_timeout + settings.webhook_read_timeout + CLAIM_MARGIN
        delivery.next_attempt_at = now + timedelta(seconds=in_flight)
        return _Claim(
            delivery_id=delivery.id,
            endpoint_id=endpoint.id,
            url=endpoint.url,
            secrets=signing_secrets(endpoint, now),
            msg_id=event.event_id,
            body=body_of(event),
            attempts=delivery.attempts,
        )


def _attempt(claim: _Claim, settings: Settings, now: datetime, http: Poster) -> _Attempt:
    """Check the URL again (DNS may have changed) and POST; no transaction is open."""
    try:
        target = check_url(claim.url, allow_networks=settings.webhook_allow_networks)
    except UnsafeURL as exc:
        return _Attempt(error=str(exc), permanent=True)
    signed = headers(claim.secrets, claim.msg_id, int(now.timestamp()), claim.body)
    try:
        answer = http(
            target,
            signed,
            claim.body,
            connect_timeout=settings.webhook_connect_timeout,
            read_timeout=settings.webhook_read_timeout,
            max_bytes=settings.webhook_max_response_bytes,
        )
    except PostFailed as exc:
        return _Attempt(error=exc.reason, latency_ms=exc.latency_ms)
    return _Attempt(answer.status, _answer_error(answer), answer.latency_ms)


def _answer_error(answer: Answer) -> str | None:
    if 200 <= answer.status < 300:
        return None
    if 300 <= answer.status < 400:
        where = f" to {answer.location[:200]}" if answer.location else ""
        return f"redirect not followed (HTTP {answer.status}{where})"
    text = " ".join(answer.body.decode("utf-8", "replace").split())[:ANSWER_SNIPPET_CHARS]
    return f"HTTP {answer.status}" + (f": {text}" if text else "")


def _record(
    claim: _Claim,
    attempt: _Attempt,
    session_factory: sessionmaker[Session],
    settings: Settings,
    now: datetime,
    schedule: tuple[float, ...],
    rand: Callable[[], float],
) -> DeliveryOutcome:
    disabled = False
    with session_scope(session_factory) as session:
        # Endpoint first, then delivery: the order disabling takes them in too.
        endpoint = session.get_one(WebhookEndpoint, claim.endpoint_id, with_for_update=True)
        delivery = session.get_one(WebhookDelivery, claim.delivery_id, with_for_update=True)
        if attempt.ok or delivery.status is not DeliveryStatus.SUCCEEDED:
            # (A failed duplicate attempt leaves a succeeded delivery's log alone.)
            delivery.last_status_code = attempt.status_code
            delivery.last_latency_ms = attempt.latency_ms
        if attempt.ok:
            delivery.status = DeliveryStatus.SUCCEEDED
            delivery.delivered_at = now
            delivery.next_attempt_at = None
            delivery.last_error = None
            endpoint.failing_since = None
        else:
            error = (attempt.error or "failed")[:MAX_ERROR_CHARS]
            if delivery.status is not DeliveryStatus.SUCCEEDED:
                delivery.last_error = error
            if delivery.status is DeliveryStatus.PENDING:
                if attempt.permanent or claim.attempts > len(schedule):
                    _finish(delivery, error)
                else:
                    wait = schedule[claim.attempts - 1] * (
                        JITTER[0] + (JITTER[1] - JITTER[0]) * rand()
                    )
                    delivery.next_attempt_at = now + timedelta(seconds=wait)
            if endpoint.failing_since is None:
                endpoint.failing_since = now
            failing = (now - endpoint.failing_since).total_seconds()
            if endpoint.active and failing > settings.webhook_disable_after:
                _disable(session, endpoint, delivery, error, now)
                disabled = True
        outcome = DeliveryOutcome(
            claim.delivery_id,
            "retry" if delivery.status is DeliveryStatus.PENDING else delivery.status.value,
            claim.attempts,
            attempt.status_code,
            attempt.error,
            attempt.latency_ms,
            delivery.next_attempt_at,
            disabled,
        )
    logger.info(
        "delivery %d (event %s, endpoint %d, attempt %d): %s%s",
        claim.delivery_id,
        claim.msg_id,
        claim.endpoint_id,
        claim.attempts,
        outcome.result,
        f" ({attempt.error})" if attempt.error else f" (HTTP {attempt.status_code})",
    )
    return outcome


def _disable(
    session: Session,
    endpoint: WebhookEndpoint,
    delivery: WebhookDelivery,
    error: str,
    now: datetime,
) -> None:
    """Turn the endpoint off with the reason; its pending deliveries fail."""
    since = endpoint.failing_since or now
    endpoint.active = False
    endpoint.disabled_at = now
    reason = f"failing since {since:%Y-%m-%d %H:%M:%S} UTC: last error {error}"
    endpoint.disabled_reason = reason[:MAX_ERROR_CHARS]
    if delivery.status is DeliveryStatus.PENDING:
        _finish(delivery, error)
    session.flush()
    session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.endpoint_id == endpoint.id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
        )
        .values(
            status=DeliveryStatus.FAILED,
            next_attempt_at=None,
            last_error=case(
                (WebhookDelivery.last_error.is_(None), ENDPOINT_DISABLED),
                else_=ENDPOINT_DISABLED + "; before: " + WebhookDelivery.last_error,
            ),
        )
        .execution_options(synchronize_session=False)
    )
    logger.warning("webhook endpoint %d disabled: %s", endpoint.id, endpoint.disabled_reason)


def _finish(delivery: WebhookDelivery, error: str) -> None:
    delivery.status = DeliveryStatus.FAILED
    delivery.next_attempt_at = None
    delivery.last_error = error


def _skipped(
    delivery_id: int, why: str, delivery: WebhookDelivery | None = None
) -> DeliveryOutcome:
    logger.info("delivery %d skipped: %s", delivery_id, why)
    return DeliveryOutcome(delivery_id, "skipped", delivery.attempts if delivery else 0, error=why)


def dispatch(
    *,
    session_factory: sessionmaker[Session],
    now: datetime | None = None,
    limit: int = DISPATCH_LIMIT,
    first_attempt_grace: float = FIRST_ATTEMPT_GRACE,
) -> list[int]:
    """Ids of the pending deliveries that are due, oldest due first.

    A retry is due at its ``next_attempt_at``; a first attempt only
    ``first_attempt_grace`` seconds later, since its own message normally comes first.
    """
    now = now or utcnow()
    fresh_before = now - timedelta(seconds=first_attempt_grace)
    with session_scope(session_factory) as session:
        ids = session.scalars(
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.status == DeliveryStatus.PENDING,
                or_(
                    WebhookDelivery.next_attempt_at.is_(None),
                    WebhookDelivery.next_attempt_at <= fresh_before,
                    and_(WebhookDelivery.attempts > 0, WebhookDelivery.next_attempt_at <= now),
                ),
            )
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(limit)
        ).all()
    if ids:
        logger.info("dispatching %d due webhook deliveries", len(ids))
    return list(ids)


def unattempted(*, session_factory: sessionmaker[Session], since: datetime) -> int:
    """Pending deliveries created since ``since`` that have not been attempted yet."""
    with session_scope(session_factory) as session:
        return int(
            session.scalar(
                select(func.count()).where(
                    WebhookDelivery.status == DeliveryStatus.PENDING,
                    WebhookDelivery.attempts == 0,
                    WebhookDelivery.created_at >= since,
                )
            )
            or 0
        )
