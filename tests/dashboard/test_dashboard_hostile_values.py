"""Every route of the URL map, fed out-of-range and malformed values in its path and in
every query or form parameter the dashboard reads, answers 4xx (or a page), never 500.

A deterministic table of hostile values, on SQLite and on PostgreSQL (whose integer and
date ranges differ from Python's): each route is requested once per value with every
parameter set to it and, when that is refused, once per parameter alone, so a parameter that
is refused (400) cannot hide another.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dashboard_helpers import Seeded, make_settings
from flask import Flask
from flask.testing import FlaskClient

from deepscreen.config import Settings
from deepscreen.db import migrate

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"

#: Out of range for Python's date arithmetic, PostgreSQL's bigint, SQLite's INTEGER and
#: floats; not numbers, not dates; markup and SQL; control characters.
HOSTILE = (
    "9999-12-31",
    "0001-01-01",
    "2024-02-30",
    "-1",
    "0",
    "9223372036854775807",
    "9223372036854775808",
    "99999999999999999999",
    "1e309",
    "nan",
    "x",
    "' OR 1=1 --",
    "<script>",
    "\x00",
    "a" * 3000,
)
#: Hostile values for ``<int:...>`` path parts (the converter refuses the rest).
HOSTILE_IDS = ("1", "0", "9223372036854775807", "9223372036854775808", "99999999999999999999")
#: Not the app's answer (static files), or ends the admin's session (logout).
SKIP = {"static", "auth.logout"}
#: Routes that read only text fields and check a password hash (scrypt: slow) are
#: requested with every parameter at once only.
NO_FALLBACK = {"users.change_password", "users.reset_password", "auth.login"}
#: Parameter names the dashboard reads, beyond what its source shows literally.
EXTRA_NAMES = {"limit", "after", "before", "status", "cursor", "page", "secret"}


def parameter_names() -> set[str]:
    """Every query and form parameter name the dashboard's code reads."""
    pattern = re.compile(
        r"""(?:args|form|values)\.get(?:list)?\(\s*"(\w+)"|(?:args|form)\["(\w+)"\]"""
        r"""|\bread\("(\w+)"|query_param\(\s*"(\w+)\""""
    )
    names = set(EXTRA_NAMES)
    for path in DASHBOARD.rglob("*.py"):
        for match in pattern.finditer(path.read_text()):
            names.update(g for g in match.groups() if g)
    return names - {"csrf_token"}


def urls(app: Flask) -> Iterator[tuple[str, str, str]]:
    """(endpoint, method, url) for every rule, with hostile values in its path."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint in SKIP:
            continue
        ints = re.findall(r"<int:\w+>", rule.rule)
        variants = HOSTILE_IDS if ints else ("x",)
        for value in variants:
            url = re.sub(r"<int:\w+>", value, rule.rule)
            url = re.sub(r"<(?:\w+:)?\w+>", "x", url)
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                yield rule.endpoint, method, url


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(
    request: pytest.FixtureRequest, tmp_path: Path, make_postgres_database: Callable[[], str]
) -> Settings:
    """Overrides conftest's: both backends, events on (their routes read parameters too)."""
    database_url = make_postgres_database() if request.param == "postgresql" else ""
    settings = make_settings(
        tmp_path, database_url, events_secret="s" * 32, events_prefixes=("images/",)
    )
    migrate.upgrade(settings)
    return settings


def test_no_route_answers_500_to_hostile_values(
    app: Flask, admin: FlaskClient, seed: Callable[..., Seeded]
) -> None:
    # Given some data, so the handlers reach their queries
    seed([0.1, 0.5, 0.9])
    names = sorted(parameter_names())
    with admin.session_transaction() as session:
        token = session["csrf"]
    failures: dict[tuple[str, str], str] = {}  # the first failure of each route
    requests = 0
    for endpoint, method, url in urls(app):
        for value in HOSTILE:
            if (method, url) in failures:
                break
            # Every parameter at once; if that is refused, each parameter alone
            queue = [dict.fromkeys(names, value)]
            while queue:
                params = queue.pop()
                requests += 1
                try:  # TESTING: an unhandled error reaches us instead of a 500 page
                    if method == "GET":
                        status = admin.get(url, query_string=params).status_code
                    else:
                        data = {**params, "csrf_token": token}
                        status = admin.open(url, method=method, data=data).status_code
                except Exception as exc:  # noqa: BLE001 - every error is a finding here
                    status, error = 500, f"{type(exc).__name__}: {str(exc)[:80]!r}"
                else:
                    error = f"{status}"
                if status >= 500 and status != 503:
                    where = ",".join(sorted(params)) if len(params) == 1 else "all parameters"
                    failures[method, url] = f"{method} {url} {where}={value[:24]!r}: {error}"
                    break
                if status in (400, 422) and len(params) > 1 and endpoint not in NO_FALLBACK:
                    queue = [{name: value} for name in names]
    assert requests > 1000
    assert not failures, f"{len(failures)} routes answered 500:\n" + "\n".join(failures.values())
