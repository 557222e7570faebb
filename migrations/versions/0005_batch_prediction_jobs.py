"""batch prediction jobs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batch_prediction_jobs",
        sa.Column("id", sa.String(length=60), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("model_id", sa.String(length=60), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("artifact_blob_key", sa.String(length=200), nullable=False),
        sa.Column("artifact_sha256", sa.String(length=64), nullable=False),
        sa.Column("input_config", sa.JSON(), nullable=False),
        sa.Column("instances_blob_key", sa.String(length=200), nullable=False),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("confidence_threshold", sa.Float(), nullable=False),
        sa.Column("max_predictions", sa.Integer(), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("chunks_done", sa.Integer(), nullable=False),
        sa.Column("successful_count", sa.Integer(), nullable=False),
        sa.Column("failed_count", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=60), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_batch_prediction_jobs_job_id_jobs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_prediction_jobs")),
        sa.UniqueConstraint("job_id", name=op.f("uq_batch_prediction_jobs_job_id")),
    )
    with op.batch_alter_table("batch_prediction_jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_batch_prediction_jobs_created", ["created_at", "id"], unique=False
        )
        batch_op.create_index(
            "ix_batch_prediction_jobs_model", ["model_id", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("batch_prediction_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_batch_prediction_jobs_model")
        batch_op.drop_index("ix_batch_prediction_jobs_created")

    op.drop_table("batch_prediction_jobs")
