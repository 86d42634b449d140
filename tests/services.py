"""Shared by fixtures: skip or fail when a service is missing, and free loopback ports."""

from __future__ import annotations

import os
import socket
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip (developer machine) or fail (CI) because a service is missing."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: required services must be up)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
