"""remote training backends: the backend, its resource names and state on training jobs,
the poller's schedule; the Vertex AI model a registered version came from

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("backend", sa.String(length=20), nullable=False, server_default="local")
        )
        batch_op.add_column(sa.Column("remote", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("remote_state", sa.String(length=60), nullable=True))
        batch_op.add_column(sa.Column("phase", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("next_poll_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("poll_failures", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("last_poll_error", sa.JSON(), nullable=True))
        batch_op.create_index("ix_training_jobs_poll", ["phase", "next_poll_at"], unique=False)

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("remote_model_name", sa.String(length=300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("remote_model_name")
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_training_jobs_poll")
        for column in (
            "last_poll_error",
            "poll_failures",
            "next_poll_at",
            "phase",
            "remote_state",
            "remote",
            "backend",
        ):
            batch_op.drop_column(column)
