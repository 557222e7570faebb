"""One evaluated image drawn with its ground truth and detections (PNG), for the error browser."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageOps

from app.evaluation.schemas import EvaluatedDetection, EvaluatedTruth, ImageResult

# Colours by outcome: what a reviewer scans for first is red and orange.
TRUTH_COLOURS = {"FOUND": (40, 180, 70), "CONFUSED": (255, 150, 0), "MISSED": (230, 30, 30)}
DETECTION_COLOURS = {
    "TRUE_POSITIVE": (40, 110, 255),
    "CONFUSION": (255, 150, 0),
    "FALSE_POSITIVE": (230, 30, 30),
}
MAX_SIDE = 1280


def render(image_bytes: bytes, result: ImageResult) -> bytes:
    """Ground truth as thick outlines (green found, orange confused, red missed), detections
    as thin outlines with label and score (blue matched, orange confused, red false alarm)."""
    with Image.open(io.BytesIO(image_bytes)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    width, height = image.size
    draw = ImageDraw.Draw(image)
    line = max(2, round(max(width, height) / 300))

    def corners(box: EvaluatedTruth | EvaluatedDetection) -> tuple[float, float, float, float]:
        return (box.x_min * width, box.y_min * height, box.x_max * width, box.y_max * height)

    for truth in result.ground_truth:
        draw.rectangle(corners(truth), outline=TRUTH_COLOURS[truth.outcome], width=line * 2)
    for detection in result.detections:
        colour = DETECTION_COLOURS[detection.outcome]
        x_min, y_min, x_max, y_max = corners(detection)
        draw.rectangle((x_min, y_min, x_max, y_max), outline=colour, width=line)
        caption = f"{detection.label} {detection.score:.2f}"
        left, top, right, bottom = draw.textbbox((x_min, y_min), caption)
        lift = bottom - top + 2
        draw.rectangle((left, top - lift, right + 2, bottom - lift), fill=colour)
        draw.text((x_min + 1, y_min - lift), caption, fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
