"""Validate training images and make their thumbnails.

The format is sniffed from the bytes, never from a file name. An image is decoded in full
before it is accepted, so a truncated or corrupt file is refused at import rather than in the
middle of a training run. Width and height are those of the image as displayed, after its EXIF
orientation: box coordinates are relative to that image.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

# Pillow format name -> the MIME type we store. AutoML took the first five; we add WEBP.
SUPPORTED_FORMATS = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "ICO": "image/x-icon",
    "WEBP": "image/webp",
}
# Pillow's own default limit; a caller's max_pixels usually takes this value.
DEFAULT_MAX_PIXELS = 89_478_485
THUMBNAIL_JPEG_QUALITY = 85

# A JPEG carrying a Multi-Picture index (many phone cameras write one) opens as MPO. It is a
# JPEG whose first picture is the image itself.
_FORMAT_ALIASES = {"MPO": "JPEG"}
# Orientations 5-8 turn the image a quarter, so its displayed width is its stored height.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# What Pillow's decoders raise on malformed input (Image.open itself catches the same family).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)
_PILLOW_BOMB = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+)")


@dataclass(frozen=True)
class ImageInfo:
    sha256: str  # hex digest of the bytes as given, which are stored unchanged
    width: int  # as displayed, after EXIF orientation
    height: int
    format: str  # a key of SUPPORTED_FORMATS
    mime_type: str
    size_bytes: int


class ImageRejected(Exception):
    """The bytes are not an image we accept; ``reason`` is fit to show the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def inspect_image(data: bytes, *, max_bytes: int, max_pixels: int) -> ImageInfo:
    """Check that ``data`` is a whole image we accept and describe it, or raise ImageRejected.

    The size is checked before anything is decoded, and the pixel count from the header before
    the pixels are allocated. Pillow's own limit (``Image.MAX_IMAGE_PIXELS``, warning above it,
    refusing above twice it) still applies where ``max_pixels`` is higher.
    """
    if not data:
        raise ImageRejected("empty file")
    if len(data) > max_bytes:
        raise ImageRejected(over_limit(len(data), max_bytes))
    with _open(data, max_pixels=max_pixels) as image:
        image_format = _format_of(image)
        width, height = image.size
        if _orientation(image) in (5, 6, 7, 8):
            width, height = height, width
    return ImageInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        width=width,
        height=height,
        format=image_format,
        mime_type=SUPPORTED_FORMATS[image_format],
        size_bytes=len(data),
    )


def make_thumbnail(
    data: bytes, *, max_side: int = 256, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[bytes, str]:
    """A small preview as ``(bytes, mime type)``: JPEG, or PNG when the image has transparency.

    The longest side is at most ``max_side`` (never enlarged) and the EXIF orientation is
    applied, so the thumbnail looks like the image the boxes were drawn on.
    """
    if not data:
        raise ImageRejected("empty file")
    with _open(data, max_pixels=max_pixels, decode=False) as image:
        has_alpha = _has_alpha(image)
        try:
            # Scales while decoding where the format allows it (JPEG decodes at 1/2, 1/4, 1/8).
            image.thumbnail((max_side, max_side))
        except Image.DecompressionBombError as exc:
            raise ImageRejected(_pillow_bomb_reason(exc, max_pixels)) from None
        except _DECODE_ERRORS as exc:
            raise ImageRejected(f"truncated or corrupt {_format_of(image)}: {exc}") from None
        method = _ORIENTATION_TRANSPOSE.get(_orientation(image))
        small: Image.Image = image.transpose(method) if method is not None else image
        small = _to_8_bit(small)
        out = io.BytesIO()
        if has_alpha:
            small.convert("RGBA").save(out, "PNG")
            return out.getvalue(), "image/png"
        small.convert("RGB").save(out, "JPEG", quality=THUMBNAIL_JPEG_QUALITY)
        return out.getvalue(), "image/jpeg"


def over_limit(size: int, limit: int) -> str:
    """``"31.2 MB is over the 30 MB limit"`` (MB = 10^6 bytes), exact bytes where rounding ties."""
    shown, shown_limit = _megabytes(size), _megabytes(limit)
    if shown == shown_limit:
        return f"{size:,} bytes is over the {limit:,}-byte limit"
    return f"{shown} is over the {shown_limit} limit"


@contextmanager
def _open(data: bytes, *, max_pixels: int, decode: bool = True) -> Iterator[ImageFile.ImageFile]:
    """Open ``data`` as one of our formats, refusing bombs from the header; decode if asked.

    Pillow's own bomb check reads the global ``Image.MAX_IMAGE_PIXELS``; setting that per call
    would race between threads, so the caller's limit is applied here to the header size,
    which ``Image.open`` reads without decoding.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Something in the process turned this on; truncated files would then pass as whole.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False")
    try:
        image = Image.open(io.BytesIO(data), formats=list(SUPPORTED_FORMATS))
    except UnidentifiedImageError:
        raise ImageRejected(_unsupported_reason(data)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning arrives as an exception where warnings are turned into errors.
        raise ImageRejected(_pillow_bomb_reason(exc, max_pixels)) from None
    except _DECODE_ERRORS as exc:
        raise ImageRejected(f"corrupt image: {exc}") from None
    with image:
        _check_pixels(image.size, max_pixels)
        if decode:
            try:
                image.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageRejected(_pillow_bomb_reason(exc, max_pixels)) from None
            except _DECODE_ERRORS as exc:
                raise ImageRejected(f"truncated or corrupt {_format_of(image)}: {exc}") from None
            # Some formats (ICO holding a PNG) only learn their true size while decoding.
            _check_pixels(image.size, max_pixels)
        yield image


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageRejected(
            f"decompression bomb: {width}×{height} pixels "  # noqa: RUF001
            f"is over the {max_pixels:,}-pixel limit"
        )


def _pillow_bomb_reason(exc: Exception, max_pixels: int) -> str:
    # Pillow raises before it hands over the image, so its message is all that gives the size.
    match = _PILLOW_BOMB.search(str(exc))
    if match is None:
        return f"decompression bomb: over the {max_pixels:,}-pixel limit"
    pixels, pillow_limit = int(match.group(1)), int(match.group(2))
    # Pillow's global limit also applies where a caller allows more; name whichever was hit.
    limit = min(max_pixels, pillow_limit)
    return f"decompression bomb: {pixels:,} pixels is over the {limit:,}-pixel limit"


def _unsupported_reason(data: bytes) -> str:
    """Why bytes none of our decoders took are refused: an unsupported format, or no image."""
    supported = ", ".join(SUPPORTED_FORMATS)
    try:
        # Only the header is read, to name the format; nothing is decoded.
        with Image.open(io.BytesIO(data)) as image:
            return f"format {image.format} is not supported ({supported})"
    except Exception:
        # Any failure here only means the format has no name: the file is refused either way.
        return "not an image"


def _format_of(image: Image.Image) -> str:
    name = image.format or ""
    return _FORMAT_ALIASES.get(name, name)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8); 1 where there is none or the EXIF block cannot be read."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:
        return 1  # viewers ignore a broken EXIF block, and so do we
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _to_8_bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit and float images into 0-255, which a plain convert would clip to white."""
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    image = image.convert("F")
    low, high = image.getextrema()
    scale = 255.0 / high if isinstance(high, int | float) and high > 255 else 1.0
    offset = -float(low) * scale if isinstance(low, int | float) and low < 0 else 0.0
    return image.point(lambda value: value * scale + offset).convert("L")


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f}".removesuffix(".0") + " MB"
