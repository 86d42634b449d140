"""API tokens from the account pages: issue (shown once), list, revoke, all audited.

The users blueprint's routes call these; the read API checks the tokens
(`dashboard.api.authenticate`). Only a token's SHA-256 is stored, and the token
itself never reaches a log, the audit log or a cookie.
"""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, request
from sqlalchemy import select
from werkzeug.wrappers import Response

from dashboard import audit, db
from dashboard.accounts import AccountError, check_token_name, isoformat, mint_token
from deepscreen.db.base import utcnow
from deepscreen.db.moderation import ApiToken, User


def of_user(user: User) -> list[ApiToken]:
    """``user``'s tokens, newest first (revoked ones too, marked)."""
    return list(
        db.session().scalars(
            select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id.desc())
        )
    )


def owned(token_id: int, owner: User) -> ApiToken:
    """Token ``token_id`` if ``owner`` has it; 404 otherwise (also for someone else's)."""
    token = db.session().get(ApiToken, token_id) if token_id < 2**63 else None
    if token is None or token.user_id != owner.id:
        abort(404, description=f"no token {token_id} of {owner.username}")
    return token


def issue(owner: User, back: str) -> str | Response:
    """Make a token for ``owner`` named by the form's ``name``; the page shows it once."""
    try:
        name = check_token_name(request.form.get("name", ""))
    except AccountError as exc:
        flash(str(exc), "error")
        return redirect(back)
    token, token_hash = mint_token()
    row = ApiToken(user_id=owner.id, name=name, token_hash=token_hash, created_at=utcnow())
    dbs = db.session()
    dbs.add(row)
    dbs.flush()
    audit.record(
        "token.create",
        target_type="api_token",
        target_id=row.id,
        after={"name": name, "user": owner.username},
    )
    dbs.commit()
    # Answered here rather than redirected: the token must not ride in a flash cookie.
    return render_template("users/token_created.html", token=token, row=row, owner=owner, back=back)


def revoke_all(owner: User) -> int:
    """Revoke every live token of ``owner`` in this request's transaction; how many."""
    now = utcnow()
    live = db.session().scalars(
        select(ApiToken).where(ApiToken.user_id == owner.id, ApiToken.revoked_at.is_(None))
    )
    count = 0
    for token in live:
        token.revoked_at = now
        count += 1
    return count


def revoke(token: ApiToken) -> None:
    """Revoke ``token`` (again is a no-op); the API refuses it from now on."""
    if token.revoked_at is not None:
        return
    token.revoked_at = utcnow()
    audit.record(
        "token.revoke",
        target_type="api_token",
        target_id=token.id,
        before={"revoked_at": None},
        after={"revoked_at": isoformat(token.revoked_at), "name": token.name},
    )
    db.session().commit()
    flash(f"Token {token.name} revoked.", "ok")
