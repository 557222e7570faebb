"""Task-aligned assignment (TOOD), quality focal classification loss and GIoU box loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import box_iou, generalized_box_iou_loss

# Task alignment: score ** ALPHA * iou ** BETA picks the TOP_K best-aligned anchors per object.
_ALPHA = 1.0
_BETA = 6.0
_TOP_K = 10
# Anchors whose centre lies within this many strides of an object's centre are candidates
# even outside its box, so objects smaller than a stride-8 cell still get anchors.
_CENTRE_RADIUS = 2.5
_BOX_WEIGHT = 2.0
_FOCAL_GAMMA = 2.0


@dataclass(frozen=True)
class Targets:
    """Ground truth of a batch, padded: ``boxes`` (B, M, 4) pixels, ``labels`` (B, M), -1 = pad."""

    boxes: torch.Tensor
    labels: torch.Tensor


@torch.no_grad()
def assign(
    scores: torch.Tensor, boxes: torch.Tensor, anchors: torch.Tensor, targets: Targets
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft class targets (B, N, C), box targets (B, N, 4) and the positive mask (B, N).

    ``scores`` are predicted probabilities (B, N, C), ``boxes`` predicted corners (B, N, 4).
    A positive's class target is its alignment normalised so that each object's best anchor
    gets that anchor's IoU (TOOD), which makes the score an estimate of localisation quality.
    """
    batch, count, _ = scores.shape
    cls_target = torch.zeros_like(scores)
    box_target = torch.zeros_like(boxes)
    positive = torch.zeros(batch, count, dtype=torch.bool, device=scores.device)
    centre = anchors[:, :2]
    radius = anchors[:, 2:3] * _CENTRE_RADIUS
    for b in range(batch):
        valid = targets.labels[b] >= 0
        if not bool(valid.any()):
            continue
        gt_boxes, gt_labels = targets.boxes[b][valid], targets.labels[b][valid]
        inside = (
            (centre[None, :, 0] > gt_boxes[:, None, 0])
            & (centre[None, :, 0] < gt_boxes[:, None, 2])
            & (centre[None, :, 1] > gt_boxes[:, None, 1])
            & (centre[None, :, 1] < gt_boxes[:, None, 3])
        )
        gt_centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
        near = ((centre[None] - gt_centre[:, None]).abs() < radius.T[..., None]).all(dim=-1)
        candidate = inside | near  # (G, N)
        ious = box_iou(gt_boxes, boxes[b]).clamp(min=0)  # (G, N)
        gt_scores = scores[b][:, gt_labels].T  # (G, N)
        alignment = gt_scores.pow(_ALPHA) * ious.pow(_BETA) * candidate
        top_k = min(_TOP_K, count)
        top = alignment.topk(top_k, dim=1).indices
        chosen = torch.zeros_like(candidate)
        chosen.scatter_(1, top, True)
        chosen &= candidate & (alignment > 0)
        # Objects whose alignment is still zero everywhere (early training) take their nearest
        # candidates by centre distance, so every object has positives from the first step.
        starved = ~chosen.any(dim=1)
        if bool(starved.any()):
            distance = (centre[None] - gt_centre[starved][:, None]).pow(2).sum(-1)
            distance = distance.masked_fill(~candidate[starved], float("inf"))
            nearest = distance.topk(min(3, count), dim=1, largest=False).indices
            rows = chosen[starved]
            rows.scatter_(1, nearest, True)
            chosen[starved] = rows & candidate[starved]
        # An anchor chosen by several objects goes to the one it overlaps most.
        owner_iou = torch.where(chosen, ious, torch.full_like(ious, -1.0))
        owner = owner_iou.argmax(dim=0)  # (N,)
        is_positive = chosen.any(dim=0)
        owned = torch.zeros_like(chosen)
        owned[owner[is_positive], is_positive.nonzero().squeeze(1)] = True
        aligned = alignment * owned
        best_alignment = aligned.amax(dim=1, keepdim=True).clamp(min=1e-9)
        best_iou = (ious * owned).amax(dim=1, keepdim=True)
        quality = (aligned / best_alignment * best_iou).amax(dim=0)  # (N,)
        anchor_index = is_positive.nonzero().squeeze(1)
        owner_index = owner[anchor_index]
        quality = quality[anchor_index].clamp(min=0.01)
        cls_target[b, anchor_index, gt_labels[owner_index]] = quality
        box_target[b, anchor_index] = gt_boxes[owner_index]
        positive[b, anchor_index] = True
    return cls_target, box_target, positive


class DetectionLoss(nn.Module):
    """Quality focal loss on all anchors plus GIoU on positives, both weighted by the soft
    targets and normalised by their sum (as in GFL / TOOD)."""

    def forward(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        anchors: torch.Tensor,
        targets: Targets,
    ) -> dict[str, torch.Tensor]:
        logits, boxes = logits.float(), boxes.float()
        scores = logits.sigmoid()
        cls_target, box_target, positive = assign(scores.detach(), boxes.detach(), anchors, targets)
        normaliser = cls_target.sum().clamp(min=1.0)
        focal_weight = (scores - cls_target).abs().pow(_FOCAL_GAMMA)
        cls_loss = (
            nn.functional.binary_cross_entropy_with_logits(logits, cls_target, reduction="none")
            * focal_weight
        ).sum() / normaliser
        if bool(positive.any()):
            weight = cls_target.amax(dim=-1)[positive]
            giou = generalized_box_iou_loss(boxes[positive], box_target[positive], reduction="none")
            box_loss = (giou * weight).sum() / normaliser
        else:
            box_loss = boxes.sum() * 0.0
        return {
            "cls": cls_loss,
            "box": _BOX_WEIGHT * box_loss,
            "total": cls_loss + _BOX_WEIGHT * box_loss,
        }
