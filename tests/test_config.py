"""Settings come from DEEPSCREEN_* variables only, with defaults and clear errors."""

from __future__ import annotations

import ast
import dataclasses
import logging
from pathlib import Path

import pytest

from deepscreen import imaging
from deepscreen.config import PACKAGED_MODEL_DIR, Settings, configuration_markdown
from deepscreen.errors import ConfigError, PermanentError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_describe_the_embedded_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings.data_dir == tmp_path / ".deepscreen"
    assert settings.database_url == f"sqlite:///{tmp_path}/.deepscreen/deepscreen.sqlite3"
    assert settings.is_sqlite
    assert settings.broker_url == "filesystem://"
    assert settings.queue_dir == tmp_path / ".deepscreen" / "queue"
    options = settings.broker_transport_options
    assert options["data_folder_in"] == options["data_folder_out"]
    assert Path(options["data_folder_in"]).is_relative_to(settings.queue_dir)
    assert settings.s3_addressing == "path"
    assert settings.s3_endpoint_url is None
    assert settings.model_dir == PACKAGED_MODEL_DIR
    assert settings.classify_batch_size == 16
    assert settings.inference_threads == 1


def test_defaults_match_the_imaging_limits() -> None:
    settings = Settings()
    assert settings.max_image_bytes == imaging.DEFAULT_MAX_BYTES
    assert settings.max_image_pixels == imaging.DEFAULT_MAX_PIXELS


def test_every_variable_is_read(tmp_path: Path) -> None:
    env = {
        "DEEPSCREEN_DATA_DIR": str(tmp_path / "d"),
        "DEEPSCREEN_DATABASE_URL": "postgresql+psycopg://u:p@db/deepscreen",
        "DEEPSCREEN_BROKER_URL": "redis://redis:6379/0",
        "DEEPSCREEN_BROKER_VISIBILITY_TIMEOUT": "7200",
        "DEEPSCREEN_S3_ENDPOINT_URL": "http://seaweedfs:8333",
        "DEEPSCREEN_S3_REGION": "eu-west-1",
        "DEEPSCREEN_S3_ACCESS_KEY_ID": "AKIA",
        "DEEPSCREEN_S3_SECRET_ACCESS_KEY": "s3cr3t",
        "DEEPSCREEN_S3_ADDRESSING": "virtual",
        "DEEPSCREEN_S3_CONNECT_TIMEOUT": "1.5",
        "DEEPSCREEN_S3_READ_TIMEOUT": "9",
        "DEEPSCREEN_S3_MAX_ATTEMPTS": "1",
        "DEEPSCREEN_S3_LEAN_GET": "false",
        "DEEPSCREEN_URL_EXPIRES": "60",
        "DEEPSCREEN_MODEL_DIR": str(tmp_path / "model"),
        "DEEPSCREEN_CLASSIFY_BATCH_SIZE": "32",
        "DEEPSCREEN_MAX_IMAGE_BYTES": "1000",
        "DEEPSCREEN_MAX_IMAGE_PIXELS": "2000",
        "DEEPSCREEN_INFERENCE_THREADS": "2",
        "DEEPSCREEN_IMAGE_SUFFIXES": "JPG, .png,webp",
        "DEEPSCREEN_WORKER_CONCURRENCY": "3",
        "DEEPSCREEN_WORKER_METRICS_PORT": "9464",
        "DEEPSCREEN_TASK_SOFT_TIME_LIMIT": "10",
        "DEEPSCREEN_TASK_TIME_LIMIT": "20",
        "DEEPSCREEN_TASK_MAX_RETRIES": "0",
        "DEEPSCREEN_DATABASE_RETRY_WINDOW": "900",
        "DEEPSCREEN_SCAN_URLS": "s3://a/in/, file:///srv/photos",
        "DEEPSCREEN_SCAN_INTERVAL": "30",
        "DEEPSCREEN_RECONCILE_INTERVAL": "20",
        "DEEPSCREEN_RECONCILE_AFTER": "120",
        "DEEPSCREEN_REVIEW_BAND": "0.2",
        "DEEPSCREEN_REVIEW_FAKES": "no",
        "DEEPSCREEN_REVIEW_AUDIT_RATE": "0.5",
        "DEEPSCREEN_REVIEW_NO_FACE": "skip",
        "DEEPSCREEN_REVIEW_CLAIM_SECONDS": "60",
        "DEEPSCREEN_SECRET_KEY": "k" * 32,
        "DEEPSCREEN_COOKIE_SECURE": "false",
        "DEEPSCREEN_LOGIN_MAX_FAILURES": "3",
        "DEEPSCREEN_LOGIN_LOCKOUT_SECONDS": "30",
        "DEEPSCREEN_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8,::1/128",
        "DEEPSCREEN_WEBHOOK_CONNECT_TIMEOUT": "1",
        "DEEPSCREEN_WEBHOOK_READ_TIMEOUT": "2",
        "DEEPSCREEN_WEBHOOK_MAX_RESPONSE_BYTES": "100",
        "DEEPSCREEN_WEBHOOK_DISABLE_AFTER": "60",
        "DEEPSCREEN_WEBHOOK_SECRET_OVERLAP": "30",
        "DEEPSCREEN_WEBHOOK_DISPATCH_INTERVAL": "2",
        "DEEPSCREEN_WEBHOOK_RETRY_SCHEDULE": "1, 2.5,60",
        "DEEPSCREEN_EVENTS_SECRET": "shh",
        "DEEPSCREEN_EVENTS_PREFIXES": "images/incoming/",
        "DEEPSCREEN_EVENTS_BUCKETS": "images,uploads.example-2",
        "DEEPSCREEN_SUBMISSION_URL": "s3://images/api/",
        "DEEPSCREEN_SUBMISSION_MAX_BYTES": "1000",
        "DEEPSCREEN_SUBMISSION_MAX_BACKLOG": "0",
        "DEEPSCREEN_MODEL_REGISTRY_URL": "s3://models/",
        "DEEPSCREEN_RETRAIN_DATA": "/data/a,csv:/data/b.csv",
        "DEEPSCREEN_RETRAIN_GOLDEN": "/data/golden",
        "DEEPSCREEN_RETRAIN_WEIGHTS": "/w/mobilenet.weights.h5",
        "DEEPSCREEN_RETRAIN_FROM": "imagenet",
        "DEEPSCREEN_RETRAIN_MODE": "full",
        "DEEPSCREEN_RETRAIN_CORRECTION_WEIGHT": "3",
        "DEEPSCREEN_RETRAIN_ADAPT_CORRECTION_WEIGHT": "9",
        "DEEPSCREEN_RETRAIN_INTERPOLATE": "0.5",
        "DEEPSCREEN_TRAINING_ALLOCATOR": "system",
        "DEEPSCREEN_RETRAIN_HPARAMS": "head_epochs=1,fine_tune_epochs=1",
        "DEEPSCREEN_RETRAIN_INTERVAL": "86400",
        "DEEPSCREEN_RETRAIN_MIN_CORRECTIONS": "20",
        "DEEPSCREEN_GATE_MAX_AUC_DROP": "0.03",
        "DEEPSCREEN_GATE_MIN_FIXED_SHARE": "0.7",
        "DEEPSCREEN_RETRAIN_AUTO_PROMOTE": "true",
    }
    settings = Settings.from_env(env)
    # Every field has a variable, and this test sets every one of them.
    assert {f.metadata["env"] for f in dataclasses.fields(Settings)} == set(env)
    defaults = Settings()
    for f in dataclasses.fields(Settings):
        assert getattr(settings, f.name) != getattr(defaults, f.name), f.metadata["env"]
    assert settings.image_suffixes == (".jpg", ".png", ".webp")
    assert settings.scan_urls == ("s3://a/in/", "file:///srv/photos")
    assert settings.s3_connect_timeout == 1.5
    assert settings.broker_transport_options == {
        "visibility_timeout": 7200,
        "unacked_restore_throttle": 1,
    }
    assert settings.webhook_retry_schedule == (1.0, 2.5, 60.0)
    assert settings.retrain_mode == "full"
    assert not settings.is_sqlite


def test_event_buckets_default_to_the_configured_buckets() -> None:
    settings = Settings(
        events_prefixes=("images/incoming/", "other"),
        scan_urls=("s3://scanned/in/", "file:///srv/photos"),
        submission_url="s3://api-uploads/x/",
    )
    assert settings.allowed_event_buckets == {"images", "other", "scanned", "api-uploads"}
    # A folder is never a bucket, and nothing configured allows no bucket at all
    assert Settings(scan_urls=("file:///srv/photos",)).allowed_event_buckets == frozenset()
    explicit = Settings(events_buckets=("a-bucket",), events_prefixes=("images/",))
    assert explicit.allowed_event_buckets == {"a-bucket"}


@pytest.mark.parametrize(
    "name", ["file:///etc", "/etc", "Images", "a", "a..b", "-ab", "ab-", "192.168.0.1", "a/b"]
)
def test_an_events_bucket_that_is_not_an_s3_bucket_name_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="DEEPSCREEN_EVENTS_BUCKETS"):
        Settings(events_buckets=(name,))


@pytest.mark.parametrize(
    ("raw", "value"), [("1", True), ("TRUE", True), ("on", True), ("0", False), ("No", False)]
)
def test_booleans_are_read_in_the_usual_spellings(raw: str, value: bool) -> None:
    assert Settings.from_env({"DEEPSCREEN_COOKIE_SECURE": raw}).cookie_secure is value


def test_a_malformed_boolean_or_a_share_above_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="DEEPSCREEN_REVIEW_FAKES='maybe'"):
        Settings.from_env({"DEEPSCREEN_REVIEW_FAKES": "maybe"})
    with pytest.raises(ConfigError, match="DEEPSCREEN_REVIEW_AUDIT_RATE=1.5 must be at most 1"):
        Settings(review_audit_rate=1.5)
    with pytest.raises(ConfigError, match="DEEPSCREEN_RETRAIN_INTERPOLATE=1.2 must be at most 1"):
        Settings.from_env({"DEEPSCREEN_RETRAIN_INTERPOLATE": "1.2"})


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().classify_batch_size = 1  # type: ignore[misc]


def test_secrets_are_not_in_repr() -> None:
    text = repr(Settings(s3_secret_access_key="s3cr3t", secret_key="cookie-signing-key"))
    assert "s3cr3t" not in text and "cookie-signing-key" not in text


def test_empty_values_mean_default() -> None:
    settings = Settings.from_env(
        {"DEEPSCREEN_CLASSIFY_BATCH_SIZE": "", "DEEPSCREEN_S3_REGION": " "}
    )
    assert settings.classify_batch_size == 16
    assert settings.s3_region == "us-east-1"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DEEPSCREEN_CLASSIFY_BATCH_SIZE", "many", "not a valid int"),
        ("DEEPSCREEN_CLASSIFY_BATCH_SIZE", "0", "must be at least 1"),
        ("DEEPSCREEN_MAX_IMAGE_BYTES", "-5", "must be at least 1"),
        ("DEEPSCREEN_S3_READ_TIMEOUT", "soon", "not a valid float"),
        ("DEEPSCREEN_S3_READ_TIMEOUT", "nan", "finite"),
        ("DEEPSCREEN_S3_ADDRESSING", "dns", "must be one of: path, virtual, auto"),
        ("DEEPSCREEN_REVIEW_NO_FACE", "ignore", "must be one of: skip, audit, review"),
        (
            "DEEPSCREEN_TASK_TIME_LIMIT",
            "30",
            "must be greater than DEEPSCREEN_TASK_SOFT_TIME_LIMIT",
        ),
        ("DEEPSCREEN_BROKER_VISIBILITY_TIMEOUT", "60", "must be greater than DEEPSCREEN_TASK_TIME"),
        ("DEEPSCREEN_RECONCILE_AFTER", "60", "must be greater than DEEPSCREEN_TASK_TIME_LIMIT"),
        ("DEEPSCREEN_WEBHOOK_RETRY_SCHEDULE", "5,soon", "not a valid tuple"),
        ("DEEPSCREEN_WEBHOOK_RETRY_SCHEDULE", "5,0", "must be positive numbers of seconds"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Settings.from_env({name: value})
    assert name in str(info.value)
    assert isinstance(info.value, PermanentError)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError, match="DEEPSCREEN_INFERENCE_THREADS"):
        Settings(inference_threads=0)


def test_unknown_variables_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="deepscreen.config"):
        Settings.from_env({"DEEPSCREEN_DATABSE_URL": "typo", "PATH": "/bin"})
    assert "DEEPSCREEN_DATABSE_URL" in caplog.text
    assert "PATH" not in caplog.text


def test_from_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPSCREEN_CLASSIFY_BATCH_SIZE", "5")
    assert Settings.from_env().classify_batch_size == 5


def test_markdown_table_documents_every_variable() -> None:
    table = configuration_markdown()
    lines = table.strip().splitlines()
    assert lines[0] == "| Variable | Default | Meaning |"
    for f in dataclasses.fields(Settings):
        assert f"| `{f.metadata['env']}` |" in table
    assert len(lines) == 2 + len(dataclasses.fields(Settings))


def test_docs_configuration_is_up_to_date() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert configuration_markdown() in doc, "regenerate the table in docs/configuration.md"


def test_nothing_else_reads_the_environment() -> None:
    """Only deepscreen/config.py may touch os.environ or os.getenv."""
    offenders = []
    for path in sorted((REPO / "deepscreen").rglob("*.py")):
        if path.name == "config.py" and path.parent.name == "deepscreen":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []
