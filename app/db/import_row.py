"""The ``import_rows`` table: validated rows of a running import, staged until it publishes.

An import writes here in batches (short transactions), then moves everything into
``dataset_images`` and ``boxes`` in one short transaction, so nothing half-imported is
ever visible and no long transaction holds SQLite's write lock.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


class ImportRow(Base):
    __tablename__ = "import_rows"
    # Publishing joins a job's rows to dataset images by image: without both columns in one
    # index, PostgreSQL scans every staged row once per image.
    __table_args__ = (Index("ix_import_rows_job_image", "job_id", "image_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(60))
    row: Mapped[int] = mapped_column(Integer)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    source_uri: Mapped[str] = mapped_column(Text)
    split: Mapped[str] = mapped_column(String(16))
    split_assigned: Mapped[bool] = mapped_column(Boolean)
    # False for images found in a zip without any index row: imported unlabelled.
    labeled: Mapped[bool] = mapped_column(Boolean)
    label: Mapped[str | None] = mapped_column(String(64))
    x_min: Mapped[float | None] = mapped_column(Float)
    y_min: Mapped[float | None] = mapped_column(Float)
    x_max: Mapped[float | None] = mapped_column(Float)
    y_max: Mapped[float | None] = mapped_column(Float)
