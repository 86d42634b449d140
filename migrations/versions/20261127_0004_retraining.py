"""Retraining: training runs, and the model lifecycle (status candidate/active/retired,
shadow mode, gate report) on model versions. Existing active models become
"active", the others "retired".

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 08:53:55.809986+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite only auto-increments a column declared exactly INTEGER.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "training_runs",
        sa.Column("id", ID, nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "queued",
                "running",
                "registered",
                "refused",
                "failed",
                name="run_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            server_default="queued",
            nullable=False,
        ),
        sa.Column(
            "trigger",
            sa.Enum(
                "schedule",
                "corrections",
                "manual",
                name="run_trigger",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("requested_by", ID, nullable=True),
        sa.Column("corrections", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_review_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "base_model_version_id",
            ID,
            nullable=True,
        ),
        sa.Column(
            "candidate_model_version_id",
            ID,
            nullable=True,
        ),
        sa.Column(
            "gate_report",
            JSON,
            nullable=True,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("task_id", sa.String(length=255), nullable=True),
        sa.Column(
            "created_at",
            TIMESTAMP,
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["base_model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_training_runs_base_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["candidate_model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_training_runs_candidate_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["requested_by"],
            ["users.id"],
            name=op.f("fk_training_runs_requested_by_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_training_runs_status_created_at", ["status", "created_at"], unique=False
        )

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "status",
                sa.Enum(
                    "candidate",
                    "active",
                    "retired",
                    name="model_status",
                    native_enum=False,
                    create_constraint=True,
                    length=16,
                ),
                server_default="candidate",
                nullable=False,
            )
        )
        batch_op.add_column(
            sa.Column("shadow", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column(
                "gate_report",
                JSON,
                nullable=True,
            )
        )
    op.execute(
        "UPDATE model_versions SET status = CASE WHEN active THEN 'active' ELSE 'retired' END"
    )


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        # The enum's CHECK goes first: SQLite's table copy would keep it otherwise.
        batch_op.drop_constraint(op.f("ck_model_versions_model_status"), type_="check")
        batch_op.drop_column("gate_report")
        batch_op.drop_column("shadow")
        batch_op.drop_column("status")

    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_training_runs_status_created_at")

    op.drop_table("training_runs")
