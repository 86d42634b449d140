"""Settings: the one place deepscreen reads its environment.

`Settings.from_env()` turns ``DEEPSCREEN_*`` variables into one frozen object that
is passed down to every factory (`make_engine(settings)`, `open_store(url, settings)`,
...). Nothing else in the code base reads ``os.environ``. Tests build their own
`Settings(...)` directly or through `from_env({...})`.

Each field documents itself (environment variable, default, meaning) in its
metadata; `configuration_markdown()` renders that as the table in
``docs/configuration.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepscreen.errors import ConfigError

logger = logging.getLogger(__name__)

PREFIX = "DEEPSCREEN_"

#: The model shipped inside the package (``deepscreen/models/default``).
PACKAGED_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"

#: Same limits as `deepscreen.imaging` (kept literal so reading settings never imports Pillow).
DEFAULT_MAX_IMAGE_BYTES = 40 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000

DEFAULT_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")

SQLITE_FILENAME = "deepscreen.sqlite3"

#: Seconds before each webhook retry: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h.
DEFAULT_WEBHOOK_RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)

#: Seconds after which a task's process is killed, by default; the recovery times
#: derive from it.
DEFAULT_TASK_TIME_LIMIT = 60
#: Longest wait in seconds before a task is retried (backoff doubles up to it). A
#: retried message waits this long in a worker, unacknowledged, before it runs.
TASK_RETRY_MAX_DELAY = 60
#: Seconds the derived visibility timeout adds to the time limit and that wait.
VISIBILITY_MARGIN = 30
#: Seconds the reconciler's derived age adds to the time limit.
RECONCILE_MARGIN = 15


def _var(
    name: str,
    help: str,
    *,
    default_doc: str | None = None,
    minimum: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Field metadata: which variable sets the field and how it is documented."""
    return {
        "env": PREFIX + name,
        "help": help,
        "default_doc": default_doc,
        "minimum": minimum,
        "choices": choices,
    }


@dataclass(frozen=True)
class Settings:
    """Every tunable of deepscreen, immutable once built.

    Empty ``database_url`` is filled in from ``data_dir`` and ``data_dir`` is made
    absolute, so ``Settings(data_dir=tmp_path)`` is a complete embedded setup.
    """

    data_dir: Path = field(
        default=Path(".deepscreen"),
        metadata=_var(
            "DATA_DIR",
            "Folder of the embedded mode: SQLite database and file-based queue.",
            default_doc="`./.deepscreen`",
        ),
    )
    database_url: str = field(
        default="",
        metadata=_var(
            "DATABASE_URL",
            "SQLAlchemy URL, e.g. `postgresql+psycopg://user:pass@host/deepscreen`.",
            default_doc=f"`sqlite:///<DATA_DIR>/{SQLITE_FILENAME}`",
        ),
    )
    broker_url: str = field(
        default="filesystem://",
        metadata=_var(
            "BROKER_URL",
            "Celery broker, e.g. `redis://localhost:6379/0`. `filesystem://` is the "
            "embedded queue kept under `<DATA_DIR>/queue`.",
        ),
    )
    broker_visibility_timeout: int = field(
        default=0,
        metadata=_var(
            "BROKER_VISIBILITY_TIMEOUT",
            "Seconds before Redis redelivers a task a worker took and never acknowledged "
            "(the worker died). `0`: derived, `DEEPSCREEN_TASK_TIME_LIMIT` + "
            f"{TASK_RETRY_MAX_DELAY} s (the longest wait before a retry) + "
            f"{VISIBILITY_MARGIN} s. A value set must exceed the time limit plus "
            f"{TASK_RETRY_MAX_DELAY} s, or long tasks and retries are delivered twice.",
            default_doc="`0`: derived, "
            f"`{DEFAULT_TASK_TIME_LIMIT + TASK_RETRY_MAX_DELAY + VISIBILITY_MARGIN}` at the "
            "default limits",
            minimum=0,
        ),
    )
    s3_endpoint_url: str | None = field(
        default=None,
        metadata=_var(
            "S3_ENDPOINT_URL",
            "S3 endpoint, e.g. `http://seaweedfs:8333`; unset means AWS.",
            default_doc="unset",
        ),
    )
    s3_region: str = field(
        default="us-east-1",
        metadata=_var("S3_REGION", "Region used to sign S3 requests."),
    )
    s3_access_key_id: str | None = field(
        default=None,
        metadata=_var(
            "S3_ACCESS_KEY_ID",
            "S3 access key; unset means boto3's default credential chain.",
            default_doc="unset",
        ),
    )
    s3_secret_access_key: str | None = field(
        default=None,
        repr=False,
        metadata=_var("S3_SECRET_ACCESS_KEY", "S3 secret key.", default_doc="unset"),
    )
    s3_addressing: str = field(
        default="path",
        metadata=_var(
            "S3_ADDRESSING",
            "How buckets appear in S3 URLs: `path` is `host/bucket/key` (what SeaweedFS "
            "and MinIO expect), `virtual` is `bucket.host/key`, `auto` lets boto3 pick.",
            choices=("path", "virtual", "auto"),
        ),
    )
    s3_connect_timeout: float = field(
        default=5.0,
        metadata=_var("S3_CONNECT_TIMEOUT", "Seconds to wait for an S3 connection.", minimum=0.01),
    )
    s3_read_timeout: float = field(
        default=30.0,
        metadata=_var("S3_READ_TIMEOUT", "Seconds to wait for S3 to send data.", minimum=0.01),
    )
    s3_lean_get: bool = field(
        default=True,
        metadata=_var(
            "S3_LEAN_GET",
            "Fetch images with one SigV4-signed request of our own (same errors, retries and "
            "size cap) instead of boto3's `get_object`, which costs a worker 1.7-3 ms of CPU "
            "per image; `false` goes back to boto3. `auto` addressing always uses boto3.",
        ),
    )
    s3_max_attempts: int = field(
        default=3,
        metadata=_var(
            "S3_MAX_ATTEMPTS",
            "Attempts per S3 call inside boto3 (1 = no retry) before a TransientError.",
            minimum=1,
        ),
    )
    url_expires: int = field(
        default=3600,
        metadata=_var("URL_EXPIRES", "Lifetime in seconds of presigned image URLs.", minimum=1),
    )
    model_dir: Path = field(
        default=PACKAGED_MODEL_DIR,
        metadata=_var(
            "MODEL_DIR",
            "Folder of the LiteRT model and its card.",
            default_doc="the packaged `deepscreen/models/default`",
        ),
    )
    classify_batch_size: int = field(
        default=16,
        metadata=_var(
            "CLASSIFY_BATCH_SIZE", "Image ids per classify task (one inference batch).", minimum=1
        ),
    )
    max_image_bytes: int = field(
        default=DEFAULT_MAX_IMAGE_BYTES,
        metadata=_var(
            "MAX_IMAGE_BYTES",
            "Larger objects are not downloaded; the image is failed as oversized.",
            default_doc=f"`{DEFAULT_MAX_IMAGE_BYTES}` (40 MiB)",
            minimum=1,
        ),
    )
    max_image_pixels: int = field(
        default=DEFAULT_MAX_IMAGE_PIXELS,
        metadata=_var(
            "MAX_IMAGE_PIXELS",
            "Larger images are failed as oversized (decompression-bomb guard).",
            minimum=1,
        ),
    )
    inference_threads: int = field(
        default=1,
        metadata=_var(
            "INFERENCE_THREADS", "LiteRT interpreter threads per worker process.", minimum=1
        ),
    )
    image_suffixes: tuple[str, ...] = field(
        default=DEFAULT_IMAGE_SUFFIXES,
        metadata=_var(
            "IMAGE_SUFFIXES",
            "Comma-separated file suffixes that ingestion picks up (case-insensitive).",
            default_doc="`" + ",".join(DEFAULT_IMAGE_SUFFIXES) + "`",
        ),
    )
    worker_concurrency: int = field(
        default=0,
        metadata=_var(
            "WORKER_CONCURRENCY", "Worker processes; `0` means one per CPU core.", minimum=0
        ),
    )
    worker_metrics_port: int = field(
        default=0,
        metadata=_var(
            "WORKER_METRICS_PORT",
            "Port on which `deepscreen worker` serves Prometheus metrics (tasks, latency, "
            "images, queue depth) at `/metrics`; `0` turns them off.",
            minimum=0,
        ),
    )
    task_soft_time_limit: int = field(
        default=45,
        metadata=_var(
            "TASK_SOFT_TIME_LIMIT",
            "Seconds after which a task is asked to stop (SoftTimeLimitExceeded).",
            minimum=1,
        ),
    )
    task_time_limit: int = field(
        default=DEFAULT_TASK_TIME_LIMIT,
        metadata=_var(
            "TASK_TIME_LIMIT",
            "Seconds after which a task's process is killed; must exceed the soft limit. "
            "The broker visibility timeout and the reconciler's age are derived from it, "
            "so it bounds how soon a killed worker's images are classified again.",
            minimum=1,
        ),
    )
    task_max_retries: int = field(
        default=5,
        metadata=_var(
            "TASK_MAX_RETRIES",
            "Retries of a transient failure before the image is marked failed (an "
            "unreachable database is retried for `DEEPSCREEN_DATABASE_RETRY_WINDOW` "
            "instead).",
            minimum=0,
        ),
    )
    database_retry_window: int = field(
        default=600,
        metadata=_var(
            "DATABASE_RETRY_WINDOW",
            "Seconds a task keeps being retried while the database is unreachable "
            f"(backoff from 2 s doubling up to {TASK_RETRY_MAX_DELAY} s, with jitter); "
            "after that it fails, and its images wait for the reconciler.",
            minimum=0,
        ),
    )
    scan_urls: tuple[str, ...] = field(
        default=(),
        metadata=_var(
            "SCAN_URLS",
            "Comma-separated `s3://bucket/prefix` or `file:///path` locations the periodic "
            "scan ingests.",
            default_doc="empty (no periodic scan)",
        ),
    )
    scan_interval: int = field(
        default=300,
        metadata=_var("SCAN_INTERVAL", "Seconds between periodic scans.", minimum=1),
    )
    reconcile_interval: int = field(
        default=15,
        metadata=_var("RECONCILE_INTERVAL", "Seconds between reconciler runs.", minimum=1),
    )
    reconcile_after: int = field(
        default=0,
        metadata=_var(
            "RECONCILE_AFTER",
            "Seconds an image may stay processing (or queued, once the classify queue is "
            "empty) before the reconciler enqueues it again. `0`: derived, "
            f"`DEEPSCREEN_TASK_TIME_LIMIT` + {RECONCILE_MARGIN} s. A value set must exceed "
            "the time limit, or images whose task is still running are enqueued again.",
            default_doc=f"`0`: derived, `{DEFAULT_TASK_TIME_LIMIT + RECONCILE_MARGIN}` at the "
            "default limits",
            minimum=0,
        ),
    )

    review_band: float = field(
        default=0.15,
        metadata=_var(
            "REVIEW_BAND",
            "A verdict whose score is within this distance of the model's threshold goes to "
            "the review queue (uncertain); `0` turns that off.",
            minimum=0,
        ),
    )
    review_fakes: bool = field(
        default=True,
        metadata=_var("REVIEW_FAKES", "Every fake verdict goes to the review queue."),
    )
    review_audit_rate: float = field(
        default=0.02,
        metadata=_var(
            "REVIEW_AUDIT_RATE",
            "Share (0-1) of confident real verdicts sampled into the queue for audit.",
            minimum=0,
        ),
    )
    review_no_face: str = field(
        default="review",
        metadata=_var(
            "REVIEW_NO_FACE",
            "What the review queue does with a `no_face` verdict (the model's face stage "
            "found no face, so it gave no score): `skip` never queues it, `audit` queues "
            "the share `DEEPSCREEN_REVIEW_AUDIT_RATE` of them (reason `audit`), `review` "
            "queues every one (reason `no_face`).",
            choices=("skip", "audit", "review"),
        ),
    )
    review_claim_seconds: int = field(
        default=300,
        metadata=_var(
            "REVIEW_CLAIM_SECONDS",
            "How long an item a moderator opened stays claimed by them.",
            minimum=1,
        ),
    )
    secret_key: str = field(
        default="",
        repr=False,
        metadata=_var(
            "SECRET_KEY",
            "Signs the dashboard's session cookies and CSRF tokens. Empty: a random key is "
            "made once and kept in `<DATA_DIR>/secret_key`. Set it (the same on every "
            "dashboard instance) in production.",
            default_doc="empty",
        ),
    )
    cookie_secure: bool = field(
        default=True,
        metadata=_var(
            "COOKIE_SECURE",
            "Send the dashboard's session cookie over HTTPS only. Browsers also accept it "
            "on http://localhost; set `false` only for plain HTTP on another host.",
        ),
    )
    login_max_failures: int = field(
        default=5,
        metadata=_var(
            "LOGIN_MAX_FAILURES",
            "Failed logins in a row after which an account is locked for a while.",
            minimum=1,
        ),
    )
    login_lockout_seconds: int = field(
        default=300,
        metadata=_var(
            "LOGIN_LOCKOUT_SECONDS",
            "First lockout after too many failed logins; doubles with each further failure.",
            minimum=1,
        ),
    )

    webhook_allow_networks: tuple[str, ...] = field(
        default=(),
        metadata=_var(
            "WEBHOOK_ALLOW_NETWORKS",
            "Comma-separated CIDRs webhook and callback URLs may point into although they "
            "are not public (e.g. `10.0.0.0/8`); loopback, private, link-local and metadata "
            "addresses are refused otherwise.",
            default_doc="empty",
        ),
    )
    webhook_connect_timeout: float = field(
        default=5.0,
        metadata=_var(
            "WEBHOOK_CONNECT_TIMEOUT", "Seconds to connect to a webhook receiver.", minimum=0.1
        ),
    )
    webhook_read_timeout: float = field(
        default=10.0,
        metadata=_var(
            "WEBHOOK_READ_TIMEOUT", "Seconds to wait for a receiver's answer.", minimum=0.1
        ),
    )
    webhook_max_response_bytes: int = field(
        default=65536,
        metadata=_var(
            "WEBHOOK_MAX_RESPONSE_BYTES",
            "Bytes of a receiver's answer read (and kept for the delivery log) at most.",
            minimum=0,
        ),
    )
    webhook_disable_after: int = field(
        default=5 * 24 * 3600,
        metadata=_var(
            "WEBHOOK_DISABLE_AFTER",
            "Seconds an endpoint may keep failing before it is disabled (admins see why).",
            minimum=1,
        ),
    )
    webhook_secret_overlap: int = field(
        default=24 * 3600,
        metadata=_var(
            "WEBHOOK_SECRET_OVERLAP",
            "Seconds a rotated webhook secret keeps signing next to the new one.",
            minimum=0,
        ),
    )
    webhook_retry_schedule: tuple[float, ...] = field(
        default=DEFAULT_WEBHOOK_RETRY_SCHEDULE,
        metadata=_var(
            "WEBHOOK_RETRY_SCHEDULE",
            "Comma-separated seconds before each retry of a failed delivery (about 18 h in "
            "all); each wait is stretched by a random 0.8-1.2. A delivery fails for good "
            "after one attempt more than there are entries.",
            default_doc="`5,300,1800,7200,18000,36000`",
        ),
    )
    webhook_dispatch_interval: int = field(
        default=5,
        metadata=_var(
            "WEBHOOK_DISPATCH_INTERVAL",
            "Seconds between runs of the dispatcher that sends due (and retried) deliveries.",
            minimum=1,
        ),
    )
    events_secret: str = field(
        default="",
        repr=False,
        metadata=_var(
            "EVENTS_SECRET",
            "Shared secret bucket notifications must carry (`X-Deepscreen-Events-Secret` "
            "header or `?secret=`); empty turns the bucket event endpoints off.",
            default_doc="empty (endpoints off)",
        ),
    )
    events_prefixes: tuple[str, ...] = field(
        default=(),
        metadata=_var(
            "EVENTS_PREFIXES",
            "Comma-separated `bucket/prefix` pairs whose object-created events are accepted "
            "(e.g. `images/incoming/`); empty accepts any key in `DEEPSCREEN_EVENTS_BUCKETS`.",
            default_doc="empty (any key)",
        ),
    )
    events_buckets: tuple[str, ...] = field(
        default=(),
        metadata=_var(
            "EVENTS_BUCKETS",
            "Comma-separated S3 bucket names whose object-created events are accepted; an "
            "event naming any other bucket, or something that is not an S3 bucket name "
            "(such as a `file://` URL), registers nothing.",
            default_doc="empty: the buckets of `EVENTS_PREFIXES`, `SCAN_URLS` and "
            "`SUBMISSION_URL` (none configured: no bucket)",
        ),
    )
    submission_url: str = field(
        default="",
        metadata=_var(
            "SUBMISSION_URL",
            "Where images submitted through `POST /api/v1/images` are stored: "
            "`s3://bucket/prefix` or `file:///path`; empty turns submissions off.",
            default_doc="empty (submissions off)",
        ),
    )
    submission_max_bytes: int = field(
        default=20 * 1024 * 1024,
        metadata=_var(
            "SUBMISSION_MAX_BYTES", "Largest image accepted by the submission API.", minimum=1
        ),
    )
    submission_max_backlog: int = field(
        default=10_000,
        metadata=_var(
            "SUBMISSION_MAX_BACKLOG",
            "Images waiting for a worker (queued, whatever their source) beyond which the "
            "submission API answers `503` with `Retry-After` instead of accepting more; "
            "`0` sets no bound.",
            minimum=0,
        ),
    )

    model_registry_url: str = field(
        default="",
        metadata=_var(
            "MODEL_REGISTRY_URL",
            "Where model artefacts are kept, under `models/<sha256>/`: `s3://bucket/prefix` or "
            "`file:///path`. Empty: `<DATA_DIR>/registry`.",
            default_doc="empty",
        ),
    )
    retrain_data: tuple[str, ...] = field(
        default=(),
        metadata=_var(
            "RETRAIN_DATA",
            "Comma-separated base datasets of retraining, as `deepscreen train --data` takes "
            "them (a folder of a known layout, `tree:PATH`, `csv:PATH`); empty turns "
            "retraining off.",
            default_doc="empty (retraining off)",
        ),
    )
    retrain_golden: str = field(
        default="",
        metadata=_var(
            "RETRAIN_GOLDEN",
            "The fixed golden validation set of the gate (same forms as `RETRAIN_DATA`). "
            "Empty: the validation split of the base datasets, which is fixed by file name.",
            default_doc="empty",
        ),
    )
    retrain_weights: str = field(
        default="imagenet",
        metadata=_var(
            "RETRAIN_WEIGHTS",
            "Initial backbone weights when retraining from scratch: `imagenet` (Keras' "
            "download) or a `.weights.h5` path for offline use.",
        ),
    )
    retrain_from: str = field(
        default="active",
        metadata=_var(
            "RETRAIN_FROM",
            "Start from the active model's weights (`active`, when its registry entry has "
            "them) or from `RETRAIN_WEIGHTS` (`imagenet`).",
            choices=("active", "imagenet"),
        ),
    )
    retrain_mode: str = field(
        default="adapt",
        metadata=_var(
            "RETRAIN_MODE",
            "`adapt`: fine-tune the active model from its own weights on the corrections "
            "plus a replay sample of the base data (`deepscreen adapt`, minutes); `full`: "
            "train on all the base data plus the corrections. `adapt` falls back to `full` "
            "when the active model carries no Keras weights, and the run's report says so.",
            choices=("adapt", "full"),
        ),
    )
    training_allocator: str = field(
        default="tcmalloc",
        metadata=_var(
            "TRAINING_ALLOCATOR",
            "Memory allocator of the TensorFlow commands (`train`, `adapt`, `export`, "
            "`retrain`, `training-worker`): `tcmalloc` restarts the command once with "
            "Debian's `libtcmalloc-minimal4` preloaded when it is installed (a fifth to a "
            "third less time per training step, measured on 2 cores), `system` keeps "
            "glibc's malloc.",
            choices=("tcmalloc", "system"),
        ),
    )
    retrain_correction_weight: float = field(
        default=2.0,
        metadata=_var(
            "RETRAIN_CORRECTION_WEIGHT",
            "In `full` mode, the sample weight of each moderator correction relative to "
            "a base image.",
            minimum=0,
        ),
    )
    retrain_adapt_correction_weight: float = field(
        default=12.0,
        metadata=_var(
            "RETRAIN_ADAPT_CORRECTION_WEIGHT",
            "In `adapt` mode, how many average base images of its class each moderator "
            "correction counts as (`deepscreen adapt --correction-weight`).",
            minimum=0,
        ),
    )
    retrain_interpolate: float = field(
        default=0.8,
        metadata=_var(
            "RETRAIN_INTERPOLATE",
            "In `adapt` mode, the share (0-1) of the adapted weights when they are "
            "averaged with the active model's (`deepscreen adapt --interpolate`): lower "
            "keeps more of what the active model knew, 1 keeps the adapted weights as trained.",
            minimum=0,
        ),
    )
    retrain_hparams: tuple[str, ...] = field(
        default=(),
        metadata=_var(
            "RETRAIN_HPARAMS",
            "Comma-separated `name=value` hyperparameter overrides for retraining "
            "(as `deepscreen train --set`).",
            default_doc="empty",
        ),
    )
    retrain_interval: int = field(
        default=0,
        metadata=_var(
            "RETRAIN_INTERVAL",
            "Seconds between scheduled retraining runs; `0` schedules none.",
            minimum=0,
        ),
    )
    retrain_min_corrections: int = field(
        default=0,
        metadata=_var(
            "RETRAIN_MIN_CORRECTIONS",
            "Start a retraining run once this many new corrections exist (checked every "
            "`RECONCILE_INTERVAL`); `0` turns the trigger off.",
            minimum=0,
        ),
    )
    gate_max_auc_drop: float = field(
        default=0.02,
        metadata=_var(
            "GATE_MAX_AUC_DROP",
            "Largest drop of golden-set ROC-AUC against the active model a candidate may "
            "have and still be registered (the tolerance of both gate rules: a few hundred "
            "golden images move by about 0.01 between two runs of the same recipe).",
            minimum=0,
        ),
    )
    gate_min_fixed_share: float = field(
        default=0.5,
        metadata=_var(
            "GATE_MIN_FIXED_SHARE",
            "Share (0-1) of past corrections (the regression set) a candidate must classify "
            "as the moderators did.",
            minimum=0,
        ),
    )
    retrain_auto_promote: bool = field(
        default=False,
        metadata=_var(
            "RETRAIN_AUTO_PROMOTE",
            "Make a candidate that passed the gate the active model at once; otherwise an "
            "admin promotes it in the dashboard.",
        ),
    )

    def __post_init__(self) -> None:
        # Frozen: normalise through object.__setattr__, once, at construction.
        data_dir = Path(self.data_dir).expanduser().absolute()
        object.__setattr__(self, "data_dir", data_dir)
        object.__setattr__(self, "model_dir", Path(self.model_dir).expanduser().absolute())
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir / SQLITE_FILENAME}")
        object.__setattr__(
            self, "image_suffixes", tuple(_suffix(s) for s in self.image_suffixes if s.strip())
        )
        for f in dataclasses.fields(self):
            _check_bounds(f, getattr(self, f.name))
        if self.task_time_limit <= self.task_soft_time_limit:
            raise ConfigError(
                f"{_env_name('task_time_limit')}={self.task_time_limit} must be greater than "
                f"{_env_name('task_soft_time_limit')}={self.task_soft_time_limit}"
            )
        redelivery_floor = self.task_time_limit + TASK_RETRY_MAX_DELAY
        if self.broker_visibility_timeout and self.broker_visibility_timeout <= redelivery_floor:
            raise ConfigError(
                f"{_env_name('broker_visibility_timeout')}={self.broker_visibility_timeout} "
                f"must be greater than {_env_name('task_time_limit')}={self.task_time_limit} "
                f"plus the longest retry wait ({TASK_RETRY_MAX_DELAY} s), or long tasks and "
                "retries are delivered twice; leave it unset to derive it"
            )
        if any(not math.isfinite(w) or w <= 0 for w in self.webhook_retry_schedule):
            raise ConfigError(
                f"{_env_name('webhook_retry_schedule')}={self.webhook_retry_schedule!r} "
                "must be positive numbers of seconds"
            )
        for share in ("review_audit_rate", "retrain_interpolate"):
            if getattr(self, share) > 1:
                raise ConfigError(f"{_env_name(share)}={getattr(self, share)} must be at most 1")
        bad_buckets = [b for b in self.events_buckets if not is_s3_bucket_name(b)]
        if bad_buckets:
            raise ConfigError(
                f"{_env_name('events_buckets')}: {', '.join(map(repr, bad_buckets))} "
                "is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')"
            )
        if self.reconcile_after and self.reconcile_after <= self.task_time_limit:
            raise ConfigError(
                f"{_env_name('reconcile_after')}={self.reconcile_after} must be greater than "
                f"{_env_name('task_time_limit')}={self.task_time_limit}, or the reconciler "
                "re-queues images whose task is still running; leave it unset to derive it"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default: ``os.environ``).

        Unset or empty variables take their defaults. A malformed value raises
        `ConfigError` naming the variable; unknown ``DEEPSCREEN_*`` names are logged.
        """
        env = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        known: set[str] = set()
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            known.add(name)
            raw = env.get(name, "").strip()
            if raw:
                values[f.name] = _parse(name, raw, hints[f.name], f.metadata["choices"])
        unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in known)
        if unknown:
            logger.warning("ignoring unknown settings: %s", ", ".join(unknown))
        return cls(**values)

    @property
    def allowed_event_buckets(self) -> frozenset[str]:
        """The buckets bucket events may name: `events_buckets`, else the configured ones."""
        if self.events_buckets:
            return frozenset(self.events_buckets)
        buckets = {value.strip().lstrip("/").partition("/")[0] for value in self.events_prefixes}
        for url in (*self.scan_urls, self.submission_url):
            if url.startswith("s3://"):
                buckets.add(url.removeprefix("s3://").partition("/")[0])
        return frozenset(b for b in buckets if is_s3_bucket_name(b))

    @property
    def visibility_timeout(self) -> int:
        """Seconds before Redis redelivers an unacknowledged task: the setting, or
        derived from the time limit (a retried task waits, unacknowledged, for up to
        `TASK_RETRY_MAX_DELAY` before it runs)."""
        derived = self.task_time_limit + TASK_RETRY_MAX_DELAY + VISIBILITY_MARGIN
        return self.broker_visibility_timeout or derived

    @property
    def reconcile_age(self) -> int:
        """Seconds after which the reconciler enqueues a waiting image again: the
        setting, or derived from the time limit (after which its task is dead)."""
        return self.reconcile_after or self.task_time_limit + RECONCILE_MARGIN

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def queue_dir(self) -> Path:
        """Root of the embedded (``filesystem://``) broker's folders."""
        return self.data_dir / "queue"

    @property
    def broker_transport_options(self) -> dict[str, Any]:
        """Celery ``broker_transport_options`` for the configured broker."""
        if self.broker_url.startswith("filesystem"):
            # One process both produces and consumes, so "in" and "out" are one folder.
            messages = str(self.queue_dir / "messages")
            return {
                "data_folder_in": messages,
                "data_folder_out": messages,
                "processed_folder": str(self.queue_dir / "processed"),
                "store_processed": False,
            }
        # kombu looks for expired messages every 10 s but, by default, only acts on
        # every tenth look: with 1 a dead worker's task comes back within 10 s of
        # the visibility timeout rather than 100 s.
        return {"visibility_timeout": self.visibility_timeout, "unacked_restore_throttle": 1}


#: S3's bucket naming rules: 3-63 characters of a-z, 0-9, "." and "-", starting and
#: ending with a letter or digit (no "..", no IP address). Checked wherever an outside
#: party names a bucket, so that a name can never be a ``file://`` URL or a path.
_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")


def is_s3_bucket_name(name: str) -> bool:
    """Whether ``name`` follows S3's bucket naming rules."""
    return (
        _S3_BUCKET.fullmatch(name) is not None
        and ".." not in name
        and _IPV4.fullmatch(name) is None
    )


def configuration_markdown() -> str:
    """A Markdown table of every variable: name, default and meaning."""
    defaults = Settings.__dataclass_fields__
    lines = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        md = f.metadata
        default = md["default_doc"] or _default_doc(defaults[f.name].default)
        meaning = md["help"]
        if md["choices"]:
            meaning += " One of " + ", ".join(f"`{c}`" for c in md["choices"]) + "."
        lines.append(f"| `{md['env']}` | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


def _env_name(field_name: str) -> str:
    return str(Settings.__dataclass_fields__[field_name].metadata["env"])


def _default_doc(value: object) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return "`" + ",".join(map(str, value)) + "`"
    return f"`{value}`"


def _suffix(value: str) -> str:
    value = value.strip().lower()
    return value if value.startswith(".") else "." + value


def _parse_tuple(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _parse_floats(raw: str) -> tuple[float, ...]:
    return tuple(float(part) for part in _parse_tuple(raw))


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _parse_bool(raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE)}")


_PARSERS: dict[Any, Callable[[str], Any]] = {
    bool: _parse_bool,
    str: str,
    int: int,
    float: float,
    Path: Path,
    tuple[str, ...]: _parse_tuple,
    tuple[float, ...]: _parse_floats,
}


def _parse(name: str, raw: str, hint: Any, choices: tuple[str, ...] | None) -> Any:
    """Convert one variable's text to the field's type, or raise ConfigError naming it."""
    args = typing.get_args(hint)
    if type(None) in args:  # "X | None": the one non-None member decides
        hint = next(a for a in args if a is not type(None))
    try:
        value = _PARSERS[hint](raw)
    except ValueError as exc:
        type_name = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"{name}={raw!r} is not a valid {type_name}: {exc}") from exc
    if choices and value not in choices:
        raise ConfigError(f"{name}={raw!r} must be one of: {', '.join(choices)}")
    return value


def _check_bounds(f: dataclasses.Field[Any], value: Any) -> None:
    md = f.metadata
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{md['env']}={value!r} must be a finite number")
    minimum = md.get("minimum")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{md['env']}={value!r} must be at least {minimum:g}")
    choices = md.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{md['env']}={value!r} must be one of: {', '.join(choices)}")
