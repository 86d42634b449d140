"""`deepscreen db upgrade|downgrade|check`: apply and verify the Alembic migrations."""

from __future__ import annotations

import argparse

from deepscreen.config import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("db", help="database migrations (DEEPSCREEN_DATABASE_URL)")
    actions = p.add_subparsers(dest="db_action", metavar="ACTION", required=True)
    up = actions.add_parser("upgrade", help="apply migrations (default: up to head)")
    up.add_argument("revision", nargs="?", default="head")
    down = actions.add_parser("downgrade", help="revert migrations down to REVISION ('base': all)")
    down.add_argument("revision")
    actions.add_parser("check", help="fail if the models and the migrations differ")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deepscreen.db import migrate

    settings = Settings.from_env()
    if args.db_action == "upgrade":
        migrate.upgrade(settings, args.revision)
    elif args.db_action == "downgrade":
        migrate.downgrade(settings, args.revision)
    else:
        migrate.check(settings)
    print(f"db {args.db_action}: done ({settings.database_url.split('@')[-1]})")
    return 0
