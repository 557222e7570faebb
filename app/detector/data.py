"""Images decoded once and cached resized; augmentation; batches; class-balanced sampling.

Augmentation uses ``torchvision.transforms.v2``'s functional ops on ``tv_tensors`` so image and
boxes move together, with every random draw taken from a NumPy generator seeded by
``(seed, epoch, index)``: a batch is the same whichever process makes it and however often a
run is resumed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from app.detector.types import ReadImage, Sample

# Cached images keep a little more resolution than the input so zoom-in crops stay sharp.
_CACHE_SCALE = 1.25
_FETCH_THREADS = 8
# A box keeps its label after cropping only if this share of it is still visible.
_MIN_VISIBLE = 0.35
_MIN_BOX_PIXELS = 2.0
# Repeat-factor sampling: images of labels seen in fewer than this share of the most common
# label's images are repeated (square-root rule of LVIS), at most _MAX_REPEAT times.
_REPEAT_THRESHOLD = 0.5
_MAX_REPEAT = 4.0
_ORIENTATION_TAG = 0x0112


def decode(data: bytes, max_side: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """RGB uint8 (3, H, W) as displayed (EXIF orientation applied), longer side <= max_side,
    and the displayed image's full width and height."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        # EXIF orientations 5-8 turn the image a quarter: its displayed width is its height.
        quarter_turn = image.getexif().get(_ORIENTATION_TAG, 1) in (5, 6, 7, 8)
        full_size = (height, width) if quarter_turn else (width, height)
        image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale when possible
        shown = ImageOps.exif_transpose(image).convert("RGB")
        scale = max_side / max(shown.size)
        if scale < 1:
            size = (max(1, round(shown.width * scale)), max(1, round(shown.height * scale)))
            shown = shown.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        array = np.asarray(shown, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous(), full_size


class ImageCache:
    """Every sample's image decoded once (in parallel) and kept in memory, resized."""

    def __init__(self, samples: Sequence[Sample], read_image: ReadImage, input_size: int) -> None:
        max_side = round(input_size * _CACHE_SCALE)
        keys = sorted({sample.key for sample in samples})
        with ThreadPoolExecutor(_FETCH_THREADS) as pool:
            images = pool.map(lambda key: decode(read_image(key), max_side), keys)
            decoded = dict(zip(keys, images, strict=True))
        self._images = {key: image for key, (image, _) in decoded.items()}
        self._sizes = {key: size for key, (_, size) in decoded.items()}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._images[key]

    def size_of(self, key: str) -> tuple[int, int]:
        """Width and height of the image as displayed, at full resolution."""
        return self._sizes[key]

    @property
    def nbytes(self) -> int:
        return sum(image.numel() for image in self._images.values())


@dataclass(frozen=True)
class Example:
    """One network input: ``image`` uint8 (3, S, S), ``boxes`` (K, 4) pixels, ``labels`` (K,)."""

    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor


def _pixel_boxes(sample: Sample, height: int, width: int) -> tv_tensors.BoundingBoxes:
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    boxes = torch.from_numpy(np.asarray(sample.boxes, dtype=np.float32).reshape(-1, 4)) * scale
    return tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width))


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def stretched(image: torch.Tensor, size: int) -> torch.Tensor:
    """A decoded image stretched to ``size`` square: the model's input."""
    return F.resize(image, [size, size], antialias=True)


def model_input(data: bytes, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """The one preprocessing of an encoded image for the model, as evaluation and training's
    validation see it (:class:`ImageCache` then :func:`plain_example`): decoded as displayed,
    at a reduced JPEG scale where the image is much larger, stretched to ``size`` square.
    Returns the uint8 (3, size, size) input and the displayed image's full width and height."""
    image, full_size = decode(data, round(size * _CACHE_SCALE))
    return stretched(image, size), full_size


def plain_example(image: torch.Tensor, sample: Sample, size: int) -> Example:
    """The image stretched to ``size`` square, as at inference time (no augmentation)."""
    height, width = image.shape[1:]
    boxes = _pixel_boxes(sample, height, width)
    resized, boxes = stretched(image, size), F.resize(boxes, [size, size])
    return Example(
        resized,
        boxes.as_subclass(torch.Tensor),
        torch.from_numpy(np.asarray(sample.labels, dtype=np.int64)),
    )


def augmented_example(
    image: torch.Tensor,
    sample: Sample,
    size: int | tuple[int, int],
    rng: np.random.Generator,
) -> Example:
    """Scale and crop jitter (zooming out as well as in), flip and colour jitter.

    ``size`` is the output's side, or its (width, height) for a mosaic tile. The crop window
    covers 30-100% of the image's area (or up to 1.6x of it, padded, when zooming out) with
    mild aspect jitter around the stretch the model sees at inference; boxes are clipped to it
    and dropped when less than ``_MIN_VISIBLE`` of them stays in view.
    """
    out_w, out_h = (size, size) if isinstance(size, int) else size
    height, width = image.shape[1:]
    boxes = _pixel_boxes(sample, height, width)
    labels = torch.from_numpy(np.asarray(sample.labels, dtype=np.int64))
    original_area = _area(boxes.as_subclass(torch.Tensor))

    tile_ratio = out_w / out_h
    if rng.random() < 0.8:
        zoom_out = rng.random() >= 0.7
        area = rng.uniform(1.0, 1.6) if zoom_out else rng.uniform(0.3, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3))) * tile_ratio
        crop_w, crop_h = width * math.sqrt(area * aspect), height * math.sqrt(area / aspect)
    else:
        zoom_out = False
        crop_w, crop_h = width * math.sqrt(tile_ratio), height / math.sqrt(tile_ratio)
    if not zoom_out:  # a zoom-in window stays inside the image
        fit = min(1.0, width / crop_w, height / crop_h)
        crop_w, crop_h = crop_w * fit, crop_h * fit
    crop_w, crop_h = max(8, round(crop_w)), max(8, round(crop_h))
    left = round(rng.uniform(min(0, width - crop_w), max(0, width - crop_w)))
    top = round(rng.uniform(min(0, height - crop_h), max(0, height - crop_h)))
    scale_x, scale_y = out_w / crop_w, out_h / crop_h
    if left < 0 or top < 0 or left + crop_w > width or top + crop_h > height:
        # Zoom-out: place the image on a grey canvas before cropping (v2's crop pads with 0).
        pad_left, pad_top = max(0, -left), max(0, -top)
        pad_right, pad_bottom = max(0, left + crop_w - width), max(0, top + crop_h - height)
        image = F.pad(image, [pad_left, pad_top, pad_right, pad_bottom], fill=114)
        boxes = F.pad(boxes, [pad_left, pad_top, pad_right, pad_bottom])
        left, top = left + pad_left, top + pad_top
    out_image = F.resized_crop(
        tv_tensors.Image(image), top, left, crop_h, crop_w, [out_h, out_w], antialias=True
    )
    out_boxes = F.resized_crop(boxes, top, left, crop_h, crop_w, [out_h, out_w])
    out_boxes = F.clamp_bounding_boxes(out_boxes).as_subclass(torch.Tensor)
    visible = _area(out_boxes) / (original_area * scale_x * scale_y).clamp(min=1e-6)
    wide = (out_boxes[:, 2] - out_boxes[:, 0] >= _MIN_BOX_PIXELS) & (
        out_boxes[:, 3] - out_boxes[:, 1] >= _MIN_BOX_PIXELS
    )
    keep = (visible >= _MIN_VISIBLE) & wide
    out_boxes, labels = out_boxes[keep], labels[keep]
    pixels = out_image.as_subclass(torch.Tensor)

    if rng.random() < 0.5:
        pixels = pixels.flip(-1)
        out_boxes = torch.stack(
            [out_w - out_boxes[:, 2], out_boxes[:, 1], out_w - out_boxes[:, 0], out_boxes[:, 3]],
            dim=1,
        )
    if rng.random() < 0.8:
        pixels = F.adjust_brightness(pixels, rng.uniform(0.7, 1.3))
        pixels = F.adjust_contrast(pixels, rng.uniform(0.7, 1.3))
        pixels = F.adjust_saturation(pixels, rng.uniform(0.6, 1.4))
        pixels = F.adjust_hue(pixels, rng.uniform(-0.02, 0.02))
    return Example(pixels.contiguous(), out_boxes.reshape(-1, 4), labels)


def mosaic_example(
    images: Sequence[torch.Tensor], samples: Sequence[Sample], size: int, rng: np.random.Generator
) -> Example:
    """Four augmented images tiled around a random centre: more objects, more scales and more
    context per step, which small datasets need most (YOLO's mosaic)."""
    centre_x = round(size * rng.uniform(0.3, 0.7))
    centre_y = round(size * rng.uniform(0.3, 0.7))
    canvas = torch.empty(3, size, size, dtype=torch.uint8)
    all_boxes, all_labels = [], []
    tiles = (
        (0, 0, centre_x, centre_y),
        (centre_x, 0, size - centre_x, centre_y),
        (0, centre_y, centre_x, size - centre_y),
        (centre_x, centre_y, size - centre_x, size - centre_y),
    )
    for image, sample, (left, top, width, height) in zip(images, samples, tiles, strict=True):
        tile = augmented_example(image, sample, (width, height), rng)
        canvas[:, top : top + height, left : left + width] = tile.image
        all_boxes.append(tile.boxes + torch.tensor([left, top, left, top], dtype=torch.float32))
        all_labels.append(tile.labels)
    return Example(canvas, torch.cat(all_boxes).reshape(-1, 4), torch.cat(all_labels))


def repeat_factors(samples: Sequence[Sample], num_labels: int) -> np.ndarray:
    """Per-image repeat factor for class-balanced sampling (1.0 for balanced data)."""
    image_counts = np.zeros(num_labels)
    for sample in samples:
        image_counts[np.unique(np.asarray(sample.labels, dtype=np.int64))] += 1
    if image_counts.max() == 0:
        return np.ones(len(samples))
    share = image_counts / image_counts.max()
    with np.errstate(divide="ignore"):
        label_factor = np.clip(np.sqrt(_REPEAT_THRESHOLD / share), 1.0, _MAX_REPEAT)
    factors = np.ones(len(samples))
    for index, sample in enumerate(samples):
        present = np.unique(np.asarray(sample.labels, dtype=np.int64))
        if present.size:
            factors[index] = label_factor[present].max()
    return factors


def epoch_order(factors: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Sample indices for one epoch: each repeated by its factor (stochastic rounding), shuffled."""
    rng = np.random.default_rng((seed, epoch, 0x5A3))
    repeats = np.floor(factors + rng.random(factors.size)).astype(np.int64)
    order = np.repeat(np.arange(factors.size), repeats)
    rng.shuffle(order)
    return order


def collate(examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (B, 3, S, S) float 0-255; boxes (B, M, 4) and labels (B, M) padded with -1."""
    images = torch.stack([example.image for example in examples]).float()
    most = max(1, max(len(example.labels) for example in examples))
    boxes = torch.zeros(len(examples), most, 4)
    labels = torch.full((len(examples), most), -1, dtype=torch.int64)
    for index, example in enumerate(examples):
        count = len(example.labels)
        boxes[index, :count] = example.boxes
        labels[index, :count] = example.labels
    return images, boxes, labels


class TrainBatches(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """The batches of one epoch, each built from (seed, epoch, position) alone."""

    def __init__(
        self,
        samples: Sequence[Sample],
        cache: ImageCache,
        size: int,
        order: np.ndarray,
        batch_size: int,
        seed: int,
        epoch: int,
        mosaic: float = 0.0,
    ) -> None:
        self.samples, self.cache, self.size = samples, cache, size
        self.seed, self.epoch, self.mosaic = seed, epoch, mosaic
        usable = len(order) - len(order) % batch_size if len(order) >= batch_size else len(order)
        self.batches = [order[i : i + batch_size] for i in range(0, usable, batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        examples = []
        for slot, index in enumerate(self.batches[position]):
            rng = np.random.default_rng((self.seed, self.epoch, position, slot))
            sample = self.samples[int(index)]
            if rng.random() < self.mosaic:
                others = rng.integers(0, len(self.samples), 3)
                group = [sample, *(self.samples[int(other)] for other in others)]
                images = [self.cache[member.key] for member in group]
                examples.append(mosaic_example(images, group, self.size, rng))
            else:
                examples.append(augmented_example(self.cache[sample.key], sample, self.size, rng))
        return collate(examples)
