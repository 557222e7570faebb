"""datasets, images, boxes and import staging

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('datasets',
    sa.Column('id', sa.String(length=60), nullable=False),
    sa.Column('display_name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_datasets'))
    )
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_datasets_created_at'), ['created_at'], unique=False)

    op.create_table('images',
    sa.Column('id', sa.String(length=60), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('blob_key', sa.String(length=200), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('format', sa.String(length=16), nullable=False),
    sa.Column('mime_type', sa.String(length=40), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('created_by_job_id', sa.String(length=60), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_images')),
    sa.UniqueConstraint('sha256', name=op.f('uq_images_sha256'))
    )
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_images_created_by_job_id'), ['created_by_job_id'], unique=False)

    op.create_table('dataset_images',
    sa.Column('id', sa.String(length=60), nullable=False),
    sa.Column('dataset_id', sa.String(length=60), nullable=False),
    sa.Column('image_id', sa.String(length=60), nullable=False),
    sa.Column('split', sa.String(length=16), nullable=False),
    sa.Column('split_assigned', sa.Boolean(), nullable=False),
    sa.Column('labeled', sa.Boolean(), nullable=False),
    sa.Column('source_uri', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dataset_images_dataset_id_datasets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_dataset_images_image_id_images')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset_images')),
    sa.UniqueConstraint('dataset_id', 'image_id', name=op.f('uq_dataset_images_dataset_id'))
    )
    with op.batch_alter_table('dataset_images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dataset_images_image_id'), ['image_id'], unique=False)
        batch_op.create_index('ix_dataset_images_page', ['dataset_id', 'created_at', 'id'], unique=False)
        batch_op.create_index('ix_dataset_images_split', ['dataset_id', 'split'], unique=False)

    op.create_table('import_rows',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=60), nullable=False),
    sa.Column('row', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.String(length=60), nullable=False),
    sa.Column('source_uri', sa.Text(), nullable=False),
    sa.Column('split', sa.String(length=16), nullable=False),
    sa.Column('split_assigned', sa.Boolean(), nullable=False),
    sa.Column('labeled', sa.Boolean(), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=True),
    sa.Column('x_min', sa.Float(), nullable=True),
    sa.Column('y_min', sa.Float(), nullable=True),
    sa.Column('x_max', sa.Float(), nullable=True),
    sa.Column('y_max', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_import_rows_image_id_images'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_import_rows'))
    )
    with op.batch_alter_table('import_rows', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_import_rows_image_id'), ['image_id'], unique=False)
        batch_op.create_index('ix_import_rows_job_image', ['job_id', 'image_id'], unique=False)

    op.create_table('boxes',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('dataset_id', sa.String(length=60), nullable=False),
    sa.Column('dataset_image_id', sa.String(length=60), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('x_min', sa.Float(), nullable=False),
    sa.Column('y_min', sa.Float(), nullable=False),
    sa.Column('x_max', sa.Float(), nullable=False),
    sa.Column('y_max', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_boxes_dataset_id_datasets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['dataset_image_id'], ['dataset_images.id'], name=op.f('fk_boxes_dataset_image_id_dataset_images'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_boxes')),
    sa.UniqueConstraint('dataset_image_id', 'label', 'x_min', 'y_min', 'x_max', 'y_max', name='uq_boxes_same')
    )
    with op.batch_alter_table('boxes', schema=None) as batch_op:
        batch_op.create_index('ix_boxes_dataset_label', ['dataset_id', 'label'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('boxes', schema=None) as batch_op:
        batch_op.drop_index('ix_boxes_dataset_label')

    op.drop_table('boxes')
    with op.batch_alter_table('import_rows', schema=None) as batch_op:
        batch_op.drop_index('ix_import_rows_job_image')
        batch_op.drop_index(batch_op.f('ix_import_rows_image_id'))

    op.drop_table('import_rows')
    with op.batch_alter_table('dataset_images', schema=None) as batch_op:
        batch_op.drop_index('ix_dataset_images_split')
        batch_op.drop_index('ix_dataset_images_page')
        batch_op.drop_index(batch_op.f('ix_dataset_images_image_id'))

    op.drop_table('dataset_images')
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_images_created_by_job_id'))

    op.drop_table('images')
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_datasets_created_at'))

    op.drop_table('datasets')
