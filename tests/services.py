"""Shared by fixtures: skip or fail when a service is missing, and free loopback ports."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

from deepscreen.seaweedfs import free_port

__all__ = ["free_port", "in_ci", "unavailable"]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip (developer machine) or fail (CI) because a service is missing."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: required services must be up)", pytrace=False)
    pytest.skip(reason)
