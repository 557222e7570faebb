"""registry publishing: tags, published split, etag revision, validation errors, uploads,
operations linked to the resource they change, the Firebase mirror's state

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("revision", sa.Integer(), nullable=False, server_default="1")
        )
        batch_op.add_column(sa.Column("published_split", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("validation_error", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("source", sa.String(length=16), nullable=False, server_default="training")
        )
        batch_op.add_column(sa.Column("firebase_mirror", sa.JSON(), nullable=True))
        batch_op.create_index("ix_models_display_name", ["display_name"], unique=False)

    op.create_table(
        "model_tags",
        sa.Column("model_id", sa.String(length=60), nullable=False),
        sa.Column("tag", sa.String(length=60), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_model_tags_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_id", "tag", name=op.f("pk_model_tags")),
    )
    with op.batch_alter_table("model_tags", schema=None) as batch_op:
        batch_op.create_index("ix_model_tags_tag", ["tag", "model_id"], unique=False)

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("format", sa.String(length=16), nullable=False, server_default="pytorch")
        )

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resource_name", sa.String(length=200), nullable=True))
        batch_op.create_index("ix_jobs_resource", ["resource_name", "state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_resource")
        batch_op.drop_column("resource_name")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("format")
    with op.batch_alter_table("model_tags", schema=None) as batch_op:
        batch_op.drop_index("ix_model_tags_tag")
    op.drop_table("model_tags")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index("ix_models_display_name")
        for column in (
            "firebase_mirror",
            "source",
            "validation_error",
            "published_at",
            "published_split",
            "revision",
        ):
            batch_op.drop_column(column)
