"""Faces: a prediction records the faces its model's face stage found and, for the
``no_face`` label, why it has no score (score becomes nullable, on verdicts too); the
review queue gets the ``no_face`` reason.

Downgrading deletes the ``no_face`` predictions (and their verdicts): the older schema
cannot hold a prediction without a score.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 10:12:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

OLD_REASONS = ("uncertain", "fake", "audit", "manual")
NEW_REASONS = (*OLD_REASONS, "no_face")


def _reason_check(reasons: Sequence[str]) -> str:
    return "reason IN (" + ", ".join(f"'{r}'" for r in reasons) + ")"


def upgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.alter_column("score", existing_type=sa.Float(), nullable=True)
        batch_op.add_column(sa.Column("faces", JSON, nullable=True))
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=True))

    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.alter_column("score", existing_type=sa.Float(), nullable=True)
        batch_op.drop_constraint(op.f("ck_verdicts_review_reason"), type_="check")
        batch_op.create_check_constraint(
            op.f("ck_verdicts_review_reason"), _reason_check(NEW_REASONS)
        )


def downgrade() -> None:
    # Verdicts go with their prediction (ON DELETE CASCADE, spelt out for SQLite).
    op.execute(
        "DELETE FROM verdicts WHERE prediction_id IN "
        "(SELECT id FROM predictions WHERE score IS NULL)"
    )
    op.execute("DELETE FROM predictions WHERE score IS NULL")
    op.execute("UPDATE verdicts SET reason = 'manual' WHERE reason = 'no_face'")

    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_verdicts_review_reason"), type_="check")
        batch_op.create_check_constraint(
            op.f("ck_verdicts_review_reason"), _reason_check(OLD_REASONS)
        )
        batch_op.alter_column("score", existing_type=sa.Float(), nullable=False)

    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_column("reason")
        batch_op.drop_column("faces")
        batch_op.alter_column("score", existing_type=sa.Float(), nullable=False)
