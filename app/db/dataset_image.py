"""The ``dataset_images`` table: an image's membership in a dataset, with its split."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime


class Split(enum.StrEnum):
    TRAIN = "TRAIN"
    VALIDATION = "VALIDATION"
    TEST = "TEST"


class DatasetImage(Base):
    __tablename__ = "dataset_images"
    __table_args__ = (
        UniqueConstraint("dataset_id", "image_id"),
        Index("ix_dataset_images_page", "dataset_id", "created_at", "id"),
        Index("ix_dataset_images_split", "dataset_id", "split"),
    )

    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), index=True)
    split: Mapped[str] = mapped_column(String(16))
    # True when the service chose the split (the row had no ML_USE): a later explicit one wins.
    split_assigned: Mapped[bool] = mapped_column(Boolean, default=False)
    # False: nobody has labelled it yet. True with no boxes: a reviewed negative example.
    labeled: Mapped[bool] = mapped_column(Boolean, default=False)
    source_uri: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
