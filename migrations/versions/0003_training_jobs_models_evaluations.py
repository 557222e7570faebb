"""training jobs, models, model versions and evaluations

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.String(length=60), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("model_type", sa.String(length=40), nullable=False),
        sa.Column("input_size", sa.Integer(), nullable=False),
        sa.Column("training_job_id", sa.String(length=60), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
    )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.create_index("ix_models_created", ["created_at", "id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_models_training_job_id"), ["training_job_id"], unique=False
        )

    op.create_table(
        "evaluations",
        sa.Column("id", sa.String(length=60), nullable=False),
        sa.Column("model_id", sa.String(length=60), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.String(length=60), nullable=False),
        sa.Column("split", sa.String(length=16), nullable=False),
        sa.Column("artifact_format", sa.String(length=16), nullable=False),
        sa.Column("artifact_sha256", sa.String(length=64), nullable=False),
        sa.Column("metrics_blob_key", sa.String(length=200), nullable=False),
        sa.Column("bounding_box_mean_average_precision", sa.Float(), nullable=True),
        sa.Column("ap50", sa.Float(), nullable=True),
        sa.Column("ap50_95", sa.Float(), nullable=True),
        sa.Column("evaluated_bounding_box_count", sa.Integer(), nullable=False),
        sa.Column("image_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_evaluations_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_evaluations_model", ["model_id", "created_at", "id"], unique=False
        )

    op.create_table(
        "model_versions",
        sa.Column("id", sa.String(length=60), nullable=False),
        sa.Column("model_id", sa.String(length=60), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("training_job_id", sa.String(length=60), nullable=True),
        sa.Column("weights_blob_key", sa.String(length=200), nullable=False),
        sa.Column("weights_sha256", sa.String(length=64), nullable=False),
        sa.Column("weights_size_bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_model_versions_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("model_id", "version", name=op.f("uq_model_versions_model_id")),
    )
    op.create_table(
        "training_jobs",
        sa.Column("id", sa.String(length=60), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("dataset_id", sa.String(length=60), nullable=False),
        sa.Column("model_type", sa.String(length=40), nullable=False),
        sa.Column("budget_milli_node_hours", sa.Integer(), nullable=False),
        sa.Column("disable_early_stopping", sa.Boolean(), nullable=False),
        sa.Column("base_model_id", sa.String(length=60), nullable=True),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=60), nullable=False),
        sa.Column("snapshot_blob_key", sa.String(length=200), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("train_image_count", sa.Integer(), nullable=False),
        sa.Column("validation_image_count", sa.Integer(), nullable=False),
        sa.Column("test_image_count", sa.Integer(), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.Column("cost_milli_node_hours", sa.Integer(), nullable=True),
        sa.Column("successful_stop_reason", sa.String(length=32), nullable=True),
        sa.Column("model_id", sa.String(length=60), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_training_jobs_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_jobs")),
        sa.UniqueConstraint("job_id", name=op.f("uq_training_jobs_job_id")),
    )
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_training_jobs_created", ["created_at", "id"], unique=False)
        batch_op.create_index(
            "ix_training_jobs_dataset", ["dataset_id", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_training_jobs_dataset")
        batch_op.drop_index("ix_training_jobs_created")

    op.drop_table("training_jobs")
    op.drop_table("model_versions")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_index("ix_evaluations_model")

    op.drop_table("evaluations")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_models_training_job_id"))
        batch_op.drop_index("ix_models_created")

    op.drop_table("models")
