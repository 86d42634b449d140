"""Database layer: declarative base, tables, engine/session factories and queries.

Importing this package opens no connection; `make_engine(settings)` does.
"""

from deepscreen.db import models, moderation, retraining, webhooks
from deepscreen.db.base import Base

#: Every table, as Alembic compares it with the database.
metadata = Base.metadata

__all__ = ["Base", "metadata", "models", "moderation", "retraining", "webhooks"]
