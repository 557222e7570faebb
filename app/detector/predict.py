"""Decoding, NMS and batched inference of a PyTorch model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.ops import batched_nms

from app.detector.bundle import ModelBundle
from app.detector.model import Detector, decode_boxes
from app.detector.spec import spec_for
from app.detector.types import Detections

SCORE_THRESHOLD = 0.01
NMS_IOU = 0.6
MAX_DETECTIONS = 100
PRE_NMS_TOP_K = 1000


def build_model(bundle: ModelBundle) -> Detector:
    """The network of a model file with its weights, in eval mode."""
    model = Detector(spec_for(bundle.model_type), len(bundle.labels), pretrained=False)
    model.load_state_dict(bundle.state_dict)
    return model.eval()


def postprocess(
    logits: torch.Tensor,
    offsets: torch.Tensor,
    anchors: torch.Tensor,
    input_size: int,
    *,
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = NMS_IOU,
    max_detections: int = MAX_DETECTIONS,
) -> list[Detections]:
    """Per-class NMS of a batch of raw outputs; boxes normalized to [0, 1]."""
    scores_all = logits.float().sigmoid()
    boxes_all = decode_boxes(offsets.float(), anchors) / input_size
    results = []
    for scores, boxes in zip(scores_all, boxes_all, strict=True):
        anchor_index, label = (scores > score_threshold).nonzero(as_tuple=True)
        score = scores[anchor_index, label]
        if score.numel() > PRE_NMS_TOP_K:
            top = score.topk(PRE_NMS_TOP_K).indices
            anchor_index, label, score = anchor_index[top], label[top], score[top]
        box = boxes[anchor_index].clamp(0.0, 1.0)
        keep = batched_nms(box, score, label, iou_threshold)[:max_detections]
        results.append(
            Detections(
                boxes=box[keep].numpy().astype(np.float32),
                scores=score[keep].numpy().astype(np.float32),
                labels=label[keep].numpy().astype(np.int64),
            )
        )
    return results


@torch.inference_mode()
def predict_images(
    model: Detector, images: Sequence[torch.Tensor], *, batch_size: int = 16, bf16: bool = False
) -> list[Detections]:
    """Detections for uint8 (3, S, S) images already resized to the model's input."""
    results: list[Detections] = []
    size = model.spec.input_size
    device = model.anchors.device
    anchors = model.anchors.cpu()
    for start in range(0, len(images), batch_size):
        batch = torch.stack(list(images[start : start + batch_size])).to(device).float()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits, offsets = model(batch)
        results.extend(postprocess(logits.cpu(), offsets.cpu(), anchors, size))
    return results
