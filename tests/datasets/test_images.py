from __future__ import annotations

import hashlib
import io
import os
import resource
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from app.datasets.images import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_FORMATS,
    ImageInfo,
    ImageRejected,
    inspect_image,
    make_thumbnail,
)
from tests.datasets.conftest import png_of_zeros

MAX_BYTES = 30_000_000
ORIENTATION = 0x0112
RED, BLUE = (255, 0, 0), (0, 0, 255)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def inspect(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    return inspect_image(data, max_bytes=MAX_BYTES, max_pixels=max_pixels)


def rejection(data: bytes, **limits: int) -> str:
    with pytest.raises(ImageRejected) as caught:
        inspect_image(
            data,
            max_bytes=limits.get("max_bytes", MAX_BYTES),
            max_pixels=limits.get("max_pixels", DEFAULT_MAX_PIXELS),
        )
    assert str(caught.value) == caught.value.reason
    return caught.value.reason


def halves(
    size: tuple[int, int], left: tuple[int, int, int], right: tuple[int, int, int]
) -> Image.Image:
    image = Image.new("RGB", size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(image, "JPEG", exif=exif.tobytes())


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


GENERATED = {
    "JPEG": lambda: encode(halves((40, 30), RED, BLUE), "JPEG"),
    "PNG": lambda: encode(Image.new("RGBA", (40, 30), (0, 128, 0, 100)), "PNG"),
    "GIF": lambda: encode(halves((40, 30), RED, BLUE).convert("P"), "GIF"),
    "BMP": lambda: encode(halves((40, 30), RED, BLUE), "BMP"),
    "ICO": lambda: encode(Image.new("RGBA", (32, 32), (9, 9, 9, 255)), "ICO", sizes=[(32, 32)]),
    "WEBP": lambda: encode(halves((40, 30), RED, BLUE), "WEBP"),
}


@pytest.mark.parametrize("fmt", sorted(SUPPORTED_FORMATS))
def test_every_supported_format_is_described(fmt: str) -> None:
    data = GENERATED[fmt]()
    info = inspect(data)
    expected_size = (32, 32) if fmt == "ICO" else (40, 30)
    assert info == ImageInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        width=expected_size[0],
        height=expected_size[1],
        format=fmt,
        mime_type=SUPPORTED_FORMATS[fmt],
        size_bytes=len(data),
    )


def test_a_multi_picture_jpeg_counts_as_jpeg() -> None:
    # Many phone cameras write MPO: a JPEG with more pictures after the first.
    out = io.BytesIO()
    first = halves((40, 30), RED, BLUE)
    first.save(out, "MPO", save_all=True, append_images=[Image.new("RGB", (40, 30))])
    info = inspect(out.getvalue())
    assert (info.format, info.mime_type, info.width, info.height) == ("JPEG", "image/jpeg", 40, 30)


def test_the_name_of_a_file_plays_no_part(tmp_path: Path) -> None:
    disguised = tmp_path / "photo.jpg"
    disguised.write_bytes(GENERATED["PNG"]())
    assert inspect(disguised.read_bytes()).format == "PNG"


def test_unsupported_formats_are_named() -> None:
    tiff = encode(Image.new("RGB", (8, 8)), "TIFF")
    assert rejection(tiff) == "format TIFF is not supported (JPEG, PNG, GIF, BMP, ICO, WEBP)"


def test_an_empty_file_is_refused() -> None:
    assert rejection(b"") == "empty file"


def test_bytes_that_are_no_image_are_refused() -> None:
    assert rejection(os.urandom(4096)) == "not an image"
    assert rejection(b"IMAGE_URI,label\n") == "not an image"


def test_a_truncated_jpeg_is_refused_though_its_header_is_whole() -> None:
    data = encode(halves((640, 480), RED, BLUE), "JPEG")
    reason = rejection(data[: len(data) // 2])
    assert reason.startswith("truncated or corrupt JPEG: ")


def test_a_png_with_damaged_pixel_data_is_refused() -> None:
    data = bytearray(encode(halves((64, 64), RED, BLUE), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start : start + 8] = b"\xff" * 8
    assert rejection(bytes(data)).startswith("truncated or corrupt PNG: ")


def test_the_size_is_checked_before_anything_is_decoded() -> None:
    # Not an image at all: only the size can explain this refusal.
    assert rejection(b"\0" * 31_200_000) == "31.2 MB is over the 30 MB limit"
    assert rejection(b"\0" * 30_000_001) == "30,000,001 bytes is over the 30,000,000-byte limit"


def test_a_decompression_bomb_is_refused_from_its_header_before_pixels_are_allocated() -> None:
    bomb = png_of_zeros(8000, 8000, colour_type=2, bit_depth=8)  # 256 MB once decoded
    assert len(bomb) < 300_000
    before = peak_rss_bytes()
    reason = rejection(bomb, max_pixels=10_000_000)
    assert reason == "decompression bomb: 8000×8000 pixels is over the 10,000,000-pixel limit"  # noqa: RUF001
    assert peak_rss_bytes() - before < 100_000_000


def test_pillow_own_bomb_error_is_refused_the_same_way() -> None:
    # 900 million pixels: Pillow refuses this in Image.open, before our own check runs.
    bomb = png_of_zeros(30_000, 30_000)
    reason = rejection(bomb)
    assert reason == "decompression bomb: 900,000,000 pixels is over the 89,478,485-pixel limit"
    # A caller allowing more still meets Pillow's hard limit, and is told that one.
    reason = rejection(bomb, max_pixels=1_000_000_000)
    assert reason == "decompression bomb: 900,000,000 pixels is over the 178,956,970-pixel limit"


def test_an_image_pillow_only_warns_about_is_refused() -> None:
    bomb = png_of_zeros(10_000, 10_000)  # over Pillow's warning threshold, under its error
    with pytest.warns(Image.DecompressionBombWarning):
        reason = rejection(bomb)
    assert reason == "decompression bomb: 10000×10000 pixels is over the 89,478,485-pixel limit"  # noqa: RUF001


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_a_bomb_warning_raised_as_an_error_is_a_rejection_too() -> None:
    reason = rejection(png_of_zeros(10_000, 10_000))
    assert reason == "decompression bomb: 100,000,000 pixels is over the 89,478,485-pixel limit"


def test_truncated_images_stay_refused_if_pillow_is_told_to_load_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        inspect(GENERATED["JPEG"]())


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_a_quarter_turn_in_exif_swaps_width_and_height(orientation: int) -> None:
    info = inspect(with_orientation(halves((40, 30), RED, BLUE), orientation))
    assert (info.width, info.height) == (30, 40)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4])
def test_other_orientations_keep_width_and_height(orientation: int) -> None:
    info = inspect(with_orientation(halves((40, 30), RED, BLUE), orientation))
    assert (info.width, info.height) == (40, 30)


def open_thumbnail(data: bytes, **params: int) -> tuple[Image.Image, str]:
    thumbnail, mime = make_thumbnail(data, **params)
    image = Image.open(io.BytesIO(thumbnail))
    image.load()
    return image, mime


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = image.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def close_to(value: tuple[int, ...], colour: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 40 for a, b in zip(value[:3], colour, strict=True))


def test_a_thumbnail_fits_in_256_pixels_and_keeps_the_aspect_ratio() -> None:
    image, mime = open_thumbnail(encode(halves((1000, 500), RED, BLUE), "JPEG"))
    assert (image.format, mime, image.size) == ("JPEG", "image/jpeg", (256, 128))
    assert close_to(pixel(image, (10, 64)), RED)
    assert close_to(pixel(image, (245, 64)), BLUE)


def test_a_thumbnail_is_shown_upright() -> None:
    # Orientation 6: turn 90° clockwise to display, so the stored left half ends up on top.
    image, _ = open_thumbnail(with_orientation(halves((600, 300), RED, BLUE), 6))
    assert image.size == (128, 256)
    assert close_to(pixel(image, (64, 10)), RED)
    assert close_to(pixel(image, (64, 245)), BLUE)


def test_a_small_image_is_not_enlarged() -> None:
    image, _ = open_thumbnail(GENERATED["BMP"]())
    assert image.size == (40, 30)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "ICO"])
def test_transparency_survives_as_png(fmt: str) -> None:
    source = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    source.paste((0, 200, 0, 255), (0, 0, 150, 300))
    if fmt == "GIF":
        data = encode(source.convert("P"), "GIF", transparency=0)
    else:
        data = encode(source, fmt, **({"sizes": [(256, 256)]} if fmt == "ICO" else {}))
    image, mime = open_thumbnail(data)
    assert (image.format, mime) == ("PNG", "image/png")
    assert image.mode == "RGBA"
    assert pixel(image, (image.width - 5, image.height // 2))[3] == 0


def test_a_16_bit_image_is_scaled_rather_than_clipped() -> None:
    deep = Image.new("I;16", (200, 100), 0)
    deep.paste(20_000, (0, 0, 100, 100))
    image, mime = open_thumbnail(encode(deep, "PNG"))
    assert mime == "image/jpeg"
    assert pixel(image, (20, 50))[0] > 200
    assert pixel(image, (180, 50))[0] < 30


def test_a_thumbnail_of_a_bomb_is_refused() -> None:
    with pytest.raises(ImageRejected, match="decompression bomb"):
        make_thumbnail(png_of_zeros(4000, 4000), max_pixels=1_000_000)
