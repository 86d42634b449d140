"""Moderation: users, verdicts (the current verdict and review state per image),
reviews (decision history), audit events and API tokens.

Existing predictions get a verdict row (review state "none", so the queue does not
fill with history); images classified from now on follow the review policy.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 08:19:52.762205+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite only auto-increments a column declared exactly INTEGER.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", ID, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column(
            "role",
            sa.Enum(
                "admin",
                "moderator",
                "viewer",
                name="user_role",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("blur_images", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("session_token", sa.String(length=64), nullable=False),
        sa.Column("failed_logins", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("locked_until", TIMESTAMP, nullable=True),
        sa.Column("last_login_at", TIMESTAMP, nullable=True),
        sa.Column(
            "created_at",
            TIMESTAMP,
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "created_at",
            TIMESTAMP,
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("last_used_at", TIMESTAMP, nullable=True),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=True),
        sa.Column("username", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=True),
        sa.Column("target_id", sa.String(length=64), nullable=True),
        sa.Column(
            "before",
            JSON,
            nullable=True,
        ),
        sa.Column(
            "after",
            JSON,
            nullable=True,
        ),
        sa.Column(
            "created_at",
            TIMESTAMP,
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_audit_events_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_events_action_created_at", ["action", "created_at"], unique=False
        )
        batch_op.create_index("ix_audit_events_created_at", ["created_at"], unique=False)
        batch_op.create_index("ix_audit_events_target", ["target_type", "target_id"], unique=False)
        batch_op.create_index(
            "ix_audit_events_user_id_created_at", ["user_id", "created_at"], unique=False
        )

    op.create_table(
        "reviews",
        sa.Column("id", ID, nullable=False),
        sa.Column("image_id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column(
            "action",
            sa.Enum(
                "confirm",
                "override",
                "flag",
                "escalate",
                "note",
                name="review_action",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("label", sa.String(length=64), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("model_version_id", ID, nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column(
            "created_at",
            TIMESTAMP,
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_reviews_image_id_images"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_reviews_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_reviews_user_id_users"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
    )
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.create_index("ix_reviews_created_at", ["created_at"], unique=False)
        batch_op.create_index(
            "ix_reviews_image_id_created_at", ["image_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_reviews_user_id_created_at", ["user_id", "created_at"], unique=False
        )

    op.create_table(
        "verdicts",
        sa.Column("id", ID, nullable=False),
        sa.Column("image_id", ID, nullable=False),
        sa.Column("prediction_id", ID, nullable=False),
        sa.Column("model_version_id", ID, nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("model_label", sa.String(length=64), nullable=False),
        sa.Column("human_label", sa.String(length=64), nullable=True),
        sa.Column("final_label", sa.String(length=64), nullable=False),
        sa.Column(
            "source",
            sa.Enum(
                "scan",
                "event",
                "api",
                name="verdict_source",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column(
            "state",
            sa.Enum(
                "none",
                "open",
                "escalated",
                "decided",
                name="review_state",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            server_default="none",
            nullable=False,
        ),
        sa.Column(
            "reason",
            sa.Enum(
                "uncertain",
                "fake",
                "audit",
                "manual",
                name="review_reason",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=True,
        ),
        sa.Column("priority", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("flagged", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("flag_label", sa.String(length=64), nullable=True),
        sa.Column("claimed_by", ID, nullable=True),
        sa.Column("claim_expires_at", TIMESTAMP, nullable=True),
        sa.Column("image_created_at", TIMESTAMP, nullable=False),
        sa.Column(
            "created_at",
            TIMESTAMP,
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            TIMESTAMP,
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("decided_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["claimed_by"],
            ["users.id"],
            name=op.f("fk_verdicts_claimed_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
            name=op.f("fk_verdicts_image_id_images"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_verdicts_model_version_id_model_versions"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name=op.f("fk_verdicts_prediction_id_predictions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verdicts")),
        sa.UniqueConstraint("image_id", name=op.f("uq_verdicts_image_id")),
    )
    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_verdicts_final_label_image_created_at",
            ["final_label", "image_created_at"],
            unique=False,
        )
        batch_op.create_index("ix_verdicts_flagged", ["flagged"], unique=False)
        batch_op.create_index("ix_verdicts_image_created_at", ["image_created_at"], unique=False)
        batch_op.create_index("ix_verdicts_model_version_id", ["model_version_id"], unique=False)
        batch_op.create_index(
            "ix_verdicts_queue",
            ["state", sa.text("priority DESC"), "image_created_at", "id"],
            unique=False,
        )
        batch_op.create_index("ix_verdicts_score", ["score"], unique=False)

    # One verdict per classified image: its latest prediction.
    op.execute(
        """
        INSERT INTO verdicts (image_id, prediction_id, model_version_id, score, model_label,
                              final_label, source, state, priority, flagged, image_created_at)
        SELECT p.image_id, p.id, p.model_version_id, p.score, p.label, p.label, i.source,
               'none', 0, false, i.created_at
        FROM predictions p JOIN images i ON i.id = p.image_id
        WHERE p.id = (SELECT max(p2.id) FROM predictions p2 WHERE p2.image_id = p.image_id)
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.drop_index("ix_verdicts_score")
        batch_op.drop_index("ix_verdicts_queue")
        batch_op.drop_index("ix_verdicts_model_version_id")
        batch_op.drop_index("ix_verdicts_image_created_at")
        batch_op.drop_index("ix_verdicts_flagged")
        batch_op.drop_index("ix_verdicts_final_label_image_created_at")

    op.drop_table("verdicts")
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.drop_index("ix_reviews_user_id_created_at")
        batch_op.drop_index("ix_reviews_image_id_created_at")
        batch_op.drop_index("ix_reviews_created_at")

    op.drop_table("reviews")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_user_id_created_at")
        batch_op.drop_index("ix_audit_events_target")
        batch_op.drop_index("ix_audit_events_created_at")
        batch_op.drop_index("ix_audit_events_action_created_at")

    op.drop_table("audit_events")
    op.drop_table("api_tokens")
    op.drop_table("users")
