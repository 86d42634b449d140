"""Account rules shared by the ``create-user`` command and the users pages.

Plain functions over a SQLAlchemy session, no Flask: what a valid username and
password are, whether a user is the last active admin, lock state for the audit
log, and API tokens (a random secret shown once; only its SHA-256 is stored).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deepscreen.db.moderation import Role, User

MIN_PASSWORD_LENGTH = 8
#: Bounds the KDF's work on hostile input; far above any passphrase.
MAX_PASSWORD_LENGTH = 1024
MAX_USERNAME_LENGTH = 64
MAX_TOKEN_NAME_LENGTH = 128
#: Marks deepscreen tokens, so a secret scanner (or a human) recognises a leaked one.
TOKEN_PREFIX = "ds_"


class AccountError(ValueError):
    """A refused account change; the message is fit to show to the user."""


def check_username(raw: str) -> str:
    """``raw`` without surrounding spaces, if it is an acceptable username.

    Any printable text is allowed (pages escape it); control characters are not,
    so a name always shows as what it is.
    """
    username = raw.strip()
    if not username:
        raise AccountError("A username is required.")
    if len(username) > MAX_USERNAME_LENGTH:
        raise AccountError(f"A username has at most {MAX_USERNAME_LENGTH} characters.")
    if not username.isprintable():
        raise AccountError("A username cannot contain control characters.")
    return username


def check_password(password: str) -> str:
    """``password`` if it is long enough (length is what makes a passphrase strong)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"A password needs at least {MIN_PASSWORD_LENGTH} characters.")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"A password has at most {MAX_PASSWORD_LENGTH} characters.")
    return password


def parse_role(raw: str | None) -> Role:
    try:
        return Role((raw or "").strip())
    except ValueError:
        raise AccountError(f"Unknown role {raw!r}.") from None


def is_last_active_admin(user: User, *, session: Session) -> bool:
    """Whether demoting or deactivating ``user`` would leave no active admin."""
    if user.role is not Role.ADMIN or not user.active:
        return False
    others = session.scalar(
        select(func.count(User.id)).where(
            User.role == Role.ADMIN, User.active.is_(True), User.id != user.id
        )
    )
    return not others


def lock_state(user: User) -> dict[str, Any]:
    """The login-throttling fields, JSON-ready for an audit event."""
    return {"failed_logins": user.failed_logins, "locked_until": isoformat(user.locked_until)}


def unlock(user: User) -> None:
    user.failed_logins, user.locked_until = 0, None


def check_token_name(raw: str) -> str:
    name = raw.strip() or "API token"
    if len(name) > MAX_TOKEN_NAME_LENGTH:
        raise AccountError(f"A token name has at most {MAX_TOKEN_NAME_LENGTH} characters.")
    if not name.isprintable():
        raise AccountError("A token name cannot contain control characters.")
    return name


def mint_token() -> tuple[str, str]:
    """A new bearer token and the SHA-256 to store; the token itself is never kept."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> str:
    # A plain hash is enough: the token is 256 random bits, not a guessable password.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def isoformat(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
