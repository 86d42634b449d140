"""Alembic environment: the database comes from deepscreen Settings, the target
schema from deepscreen.db's metadata.

Programmatic callers (tests, `deepscreen.db.migrate`) pass ``settings`` and
optionally an open ``connection`` through ``Config.attributes``; the `alembic`
command line reads DEEPSCREEN_DATABASE_URL via `Settings.from_env()`.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from deepscreen.config import Settings
from deepscreen.db import metadata
from deepscreen.db.session import make_engine

config = context.config

if config.config_file_name is not None and not config.attributes.get("connection"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _settings() -> Settings:
    settings = config.attributes.get("settings")
    return settings if settings is not None else Settings.from_env()


#: Indexes with a DESC column: SQLite's reflection drops the direction, so comparing
#: them there would always report a difference. PostgreSQL compares them in full.
DESC_INDEXES = frozenset({"ix_verdicts_queue"})


def _include_object(obj: object, name: str | None, type_: str, *_: object) -> bool:
    return not (type_ == "index" and name in DESC_INDEXES and _settings().is_sqlite)


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=metadata,
        compare_type=True,
        include_object=_include_object,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=_settings().is_sqlite,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``)."""
    _configure(url=_settings().database_url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def _sqlite_foreign_keys_off(conn: Connection) -> None:
    """Batch mode rebuilds a SQLite table by copy, DROP and rename, and with foreign
    keys on, that DROP deletes every row of the child tables declared ON DELETE
    CASCADE (a rebuilt ``predictions`` would empty ``verdicts``). Alembic's advice:
    foreign keys off for the migration's connection. The pragma only works outside a
    transaction, so it goes to the driver before SQLAlchemy begins one."""
    conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")


def _sqlite_check_foreign_keys(conn: Connection) -> None:
    """What the migrations left must still satisfy every foreign key."""
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"foreign keys broken by the migration: {broken[:5]}")


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_settings(), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:
                _sqlite_foreign_keys_off(conn)
            _run(conn)
            if sqlite:
                _sqlite_check_foreign_keys(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
