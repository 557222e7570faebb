"""MediaPipe Tasks' ObjectDetector, what Android, iOS and web apps run, on our TFLite files."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from app.detector.types import Detections


def mediapipe_detections(
    model: bytes, image: torch.Tensor, labels: Sequence[str], *, score_threshold: float = 0.0
) -> Detections:
    """MediaPipe's detections of a uint8 ``(3, S, S)`` image already at the model's input size
    (so MediaPipe's own resize is the identity and the pixels match ours), as relative boxes.

    MediaPipe reports whole pixels, truncated: ``origin = int(x_min * S)``, ``size =
    int((x_max - x_min) * S)``; and one category per box, the best. Category names must be
    the model's ``labels`` exactly (MediaPipe reads them from the file's label map)."""
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    options = vision.ObjectDetectorOptions(
        base_options=BaseOptions(model_asset_buffer=model),
        score_threshold=score_threshold,
        max_results=-1,
    )
    pixels = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    with vision.ObjectDetector.create_from_options(options) as detector:
        result = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels))
    height, width = pixels.shape[:2]
    boxes, scores, names = [], [], []
    for detection in result.detections:
        box, category = detection.bounding_box, detection.categories[0]
        boxes.append(
            [
                box.origin_x / width,
                box.origin_y / height,
                (box.origin_x + box.width) / width,
                (box.origin_y + box.height) / height,
            ]
        )
        scores.append(category.score)
        names.append(category.category_name)
    unknown = set(names) - set(labels)
    assert not unknown, f"MediaPipe reports categories the model does not have: {unknown}"
    return Detections(
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        scores=np.array(scores, dtype=np.float32),
        labels=np.array([list(labels).index(name) for name in names], dtype=np.int64),
    )


def one_per_box(detections: Detections) -> Detections:
    """The detections without a box already reported with a higher score (MediaPipe keeps
    one category per box; the op may report a box for two labels)."""
    keep = [
        i
        for i in range(len(detections.scores))
        if not any(np.array_equal(detections.boxes[i], detections.boxes[j]) for j in range(i))
    ]
    return Detections(
        boxes=detections.boxes[keep], scores=detections.scores[keep], labels=detections.labels[keep]
    )


def assert_mediapipe_agrees(expected: Detections, got: Detections, size: int, top: int) -> None:
    """MediaPipe's top detections are ``expected``'s (one per box): same labels in the same
    order, scores within 1e-5 (ties within that may swap), boxes within the two pixels its
    truncation to whole pixels can cost, plus 1e-3 of the box's size."""
    expected = one_per_box(expected)
    count = min(top, len(expected.scores))
    assert len(got.scores) >= count, (len(got.scores), count)
    np.testing.assert_allclose(got.scores[:count], expected.scores[:count], atol=1e-5)
    for i in range(count):
        box = expected.boxes[i]
        extent = max(float(box[2] - box[0]), float(box[3] - box[1]))
        tolerance = 2.0 / size + 1e-3 * extent
        candidates = np.flatnonzero(np.abs(got.scores - expected.scores[i]) <= 1e-5)
        assert any(
            got.labels[j] == expected.labels[i] and np.abs(got.boxes[j] - box).max() <= tolerance
            for j in candidates
        ), f"detection {i} ({expected.labels[i]}, {expected.scores[i]:.4f}) not in MediaPipe's"
