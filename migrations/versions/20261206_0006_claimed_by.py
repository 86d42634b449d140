"""Micro-batching: an image records the task that last claimed it (``claimed_by``), so
a redelivered or retried message takes back its own images while any other task
leaves an image another live task holds.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 13:45:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("claimed_by")
