"""The ``images`` table: image content, stored once in the blob store under its SHA-256.

Datasets refer to images through ``dataset_images``, so the same photo in two datasets (or
under two URIs) is one blob. An image no dataset refers to is garbage and gets collected.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime


class Image(Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    blob_key: Mapped[str] = mapped_column(String(200))
    # As displayed, after EXIF orientation: boxes are relative to this size.
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    mime_type: Mapped[str] = mapped_column(String(40))
    size_bytes: Mapped[int] = mapped_column(Integer)
    # The import that first stored it: a failed import removes what only it brought.
    created_by_job_id: Mapped[str | None] = mapped_column(String(60), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
