"""The ``boxes`` table: one labelled bounding box, coordinates relative to the image."""

from __future__ import annotations

from sqlalchemy import Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


class Box(Base):
    __tablename__ = "boxes"
    __table_args__ = (
        # Re-importing a file merges: the same box on the same image is stored once.
        UniqueConstraint(
            "dataset_image_id", "label", "x_min", "y_min", "x_max", "y_max", name="uq_boxes_same"
        ),
        Index("ix_boxes_dataset_label", "dataset_id", "label"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    dataset_image_id: Mapped[str] = mapped_column(
        ForeignKey("dataset_images.id", ondelete="CASCADE")
    )
    label: Mapped[str] = mapped_column(String(64))
    x_min: Mapped[float] = mapped_column(Float)
    y_min: Mapped[float] = mapped_column(Float)
    x_max: Mapped[float] = mapped_column(Float)
    y_max: Mapped[float] = mapped_column(Float)
