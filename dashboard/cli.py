"""`deepscreen create-user NAME --role ROLE [--password P] [--update]`.

Creates a dashboard account straight in the database (the first admin has no one to
create it in the dashboard). Without ``--password`` the password is asked twice on
the terminal, which keeps it out of the shell history and the process list. With
``--update`` an existing account gets the new password (and ``--role``, if given),
its sessions are ended and its login lock is cleared: the recovery path for a
forgotten admin password.

Exit status: 0 done, 1 refused (the user exists, or does not with ``--update``; the
last active admin would be demoted; database unavailable), 2 bad arguments (an
empty or short password, passwords that differ, a bad username).
"""

from __future__ import annotations

import argparse
import getpass
import sys

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dashboard.accounts import (
    MIN_PASSWORD_LENGTH,
    AccountError,
    check_password,
    check_username,
    is_last_active_admin,
    lock_state,
    unlock,
)
from deepscreen.config import Settings
from deepscreen.db.base import utcnow
from deepscreen.db.moderation import AuditEvent, Role, User
from deepscreen.db.session import make_engine, make_session_factory, session_scope
from deepscreen.errors import DatabaseUnavailable

#: The actor named in audit events written by this command.
CLI_ACTOR = "cli"


def register_create_user(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "create-user",
        help="create a dashboard account (or reset one with --update)",
        # The module docstring in plain text: no reST literals in a terminal.
        description=__doc__.split("\n\n", 1)[1].replace("``", "") if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("username", metavar="NAME", help="the login name (up to 64 characters)")
    p.add_argument(
        "--role",
        choices=[r.value for r in Role],
        help="admin (everything), moderator (reviews) or viewer (reads); required unless --update",
    )
    p.add_argument(
        "--password",
        help=f"at least {MIN_PASSWORD_LENGTH} characters (default: ask twice on the terminal)",
    )
    p.add_argument(
        "--update",
        action="store_true",
        help="reset the password (and role, if given) of an existing user instead",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        username = check_username(args.username)
        if args.role is None and not args.update:
            raise AccountError("--role is required when creating a user.")
        password = args.password if args.password is not None else _ask_password(username)
        check_password(password)
    except AccountError as exc:
        print(f"create-user: {exc}", file=sys.stderr)
        return 2
    role = Role(args.role) if args.role else None
    settings = Settings.from_env()
    engine = make_engine(settings)
    try:
        with session_scope(make_session_factory(engine)) as session:
            if args.update:
                message = _update(session, username, password, role)
            else:
                message = _create(session, username, password, role or Role.VIEWER)
    except AccountError as exc:
        print(f"create-user: {exc}", file=sys.stderr)
        return 1
    except IntegrityError:  # created concurrently by someone else
        print(f"create-user: user {username!r} already exists", file=sys.stderr)
        return 1
    except DatabaseUnavailable as exc:
        print(f"create-user: {exc} (did you run `deepscreen db upgrade`?)", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(message)
    return 0


def _create(session: Session, username: str, password: str, role: Role) -> str:
    from dashboard.auth import new_user  # the dashboard's own hashing, imported on use

    if _find(session, username) is not None:
        raise AccountError(
            f"user {username!r} already exists (use --update to reset its password or role)"
        )
    user = new_user(username, role, password)
    session.add(user)
    session.flush()
    _audit(
        session,
        "user.create",
        user,
        after={"username": user.username, "role": role.value, "active": True},
    )
    return f"created {role.value} {username!r} (id {user.id})"


def _update(session: Session, username: str, password: str, role: Role | None) -> str:
    from dashboard import security
    from dashboard.auth import rotate_session_token

    user = _find(session, username)
    if user is None:
        raise AccountError(f"no user {username!r} to update (leave out --update to create it)")
    if role is not None and role is not user.role:
        if role is not Role.ADMIN and is_last_active_admin(user, session=session):
            raise AccountError(f"{username!r} is the last active admin: not demoting it")
        _audit(
            session, "user.role", user, before={"role": user.role.value}, after={"role": role.value}
        )
        user.role = role
    before = lock_state(user)
    user.password_hash = security.hash_password(password)
    rotate_session_token(user)
    unlock(user)
    _audit(
        session,
        "user.password_reset",
        user,
        before=before,
        after={**lock_state(user), "sessions_revoked": True},
    )
    state = "" if user.active else " (the account is deactivated)"
    return f"updated {user.role.value} {username!r} (id {user.id}){state}"


def _find(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def _audit(
    session: Session,
    action: str,
    user: User,
    *,
    before: dict[str, object] | None = None,
    after: dict[str, object] | None = None,
) -> None:
    session.add(
        AuditEvent(
            user_id=None,
            username=CLI_ACTOR,
            action=action,
            target_type="user",
            target_id=str(user.id),
            before=before,
            after=after,
            created_at=utcnow(),
        )
    )


def _ask_password(username: str) -> str:
    first = getpass.getpass(f"Password for {username}: ")
    if not first:
        raise AccountError("the password is empty")
    if getpass.getpass("Again: ") != first:
        raise AccountError("the passwords differ")
    return first
