"""A generated image folder of unusual and broken files, each with its expected outcome.

`write_corpus(root)` writes root/<split>/<label>/... with Pillow and NumPy (no
network) and returns, per path, either `Decodes` (the colours the encoder must
see) or `Reported` (a phrase the reason must contain). `SYSTEM_FILES` are
operating-system and editor files that must be neither classes nor images.

Good images are two-toned: the top half TOP, the bottom half BOTTOM, so a decode
that swaps channels, drops the palette, takes the wrong frame or transposes the
image shows in two pixels.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import zlib

import numpy as np
from PIL import Image

HEIGHT, WIDTH = 36, 40
TOP, BOTTOM = (200, 30, 60), (20, 90, 220)
GRAY_TOP, GRAY_BOTTOM = (60,) * 3, (190,) * 3
CLASSES = ("cats", "café au lait", "Ωmega 2")
TEST_ONLY_CLASS = "dogs"  # present only in the test split: still in the class list


@dataclasses.dataclass(frozen=True)
class Decodes:
    """Decoded to `size` (height, width) with these colours at the top and the bottom."""

    top: tuple[int, int, int] = TOP
    bottom: tuple[int, int, int] = BOTTOM
    size: tuple[int, int] = (HEIGHT, WIDTH)
    tolerance: int = 2  # lossy formats allow more


@dataclasses.dataclass(frozen=True)
class Reported:
    """Left out, with a reason containing `reason`."""

    reason: str


def two_tone(top=TOP, bottom=BOTTOM, height=HEIGHT, width=WIDTH, dtype=np.uint8) -> np.ndarray:
    pixels = np.empty((height, width, len(top)), dtype)
    pixels[: height // 2], pixels[height // 2:] = top, bottom
    return pixels


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_bytes(pixels: np.ndarray) -> bytes:
    """A PNG of uint8 or uint16 [H, W, 1 or 3] pixels (Pillow cannot write 16-bit RGB)."""
    height, width, channels = pixels.shape
    depth = 16 if pixels.dtype == np.uint16 else 8
    rows = pixels.astype(">u2" if depth == 16 else np.uint8).reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    color_type = {1: 0, 3: 2}[channels]
    return _png(width, height, depth, color_type, zlib.compress(raw))


def flat_png_bytes(width: int, height: int) -> bytes:
    """A valid black gray PNG of any size, compressed row by row (little memory)."""
    compressor, row, parts = zlib.compressobj(1), bytes(width + 1), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    return _png(width, height, 8, 0, b"".join(parts))


def _png(width, height, depth, color_type, idat) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _palette_image() -> Image.Image:
    """Palette image: index 3 on top, 7 below; the palette maps them to TOP and BOTTOM."""
    image = Image.fromarray(np.where(np.arange(HEIGHT)[:, None] < HEIGHT // 2, 3, 7)
                            .repeat(WIDTH, 1).astype(np.uint8), "P")
    palette = [0] * 768
    palette[9:12], palette[21:24] = TOP, BOTTOM
    image.putpalette(palette)
    return image


def _animation(fmt: str, **options) -> bytes:
    """First frame two-toned, second frame other colours: decoders must show the first."""
    first = Image.fromarray(two_tone())
    second = Image.fromarray(two_tone((0, 255, 0), (255, 255, 0)))
    return encoded(first, fmt, save_all=True, append_images=[second], **options)


def _good_files() -> dict[str, tuple[bytes, Decodes]]:
    """{name: (bytes, expected)} of files that must decode."""
    rgb, gray = Image.fromarray(two_tone()), Image.fromarray(two_tone((60,), (190,))[..., 0])
    alpha = np.full((HEIGHT, WIDTH, 1), 100, np.uint8)
    jpeg = dict(quality=95, subsampling=0)
    lossy = Decodes(tolerance=10)
    grayish = Decodes(GRAY_TOP, GRAY_BOTTOM)
    one_bit = Image.fromarray(two_tone((0,), (255,))[..., 0] > 0)
    gray16 = Image.fromarray(two_tone((60 * 257,), (190 * 257,), dtype=np.uint16)[..., 0])
    black, white = Decodes((0,) * 3, (0,) * 3), Decodes((255,) * 3, (255,) * 3)
    return {
        "rgb.jpg": (encoded(rgb, "JPEG", **jpeg), lossy),
        "UPPER.JPG": (encoded(rgb, "JPEG", **jpeg), lossy),
        "mixed.JpEg": (encoded(rgb, "JPEG", **jpeg), lossy),
        "progressive.jpg": (encoded(rgb, "JPEG", progressive=True, **jpeg), lossy),
        "gray.jpg": (encoded(gray, "JPEG", quality=95), Decodes(GRAY_TOP, GRAY_BOTTOM, tolerance=4)),
        "cmyk.jpg": (encoded(rgb.convert("CMYK"), "JPEG", **jpeg), lossy),
        "rgb.png": (encoded(rgb, "PNG"), Decodes()),
        "gray.png": (encoded(gray, "PNG"), grayish),
        "gray_alpha.png": (encoded(Image.merge("LA", (gray, Image.new("L", gray.size, 100))), "PNG"),
                           grayish),
        "rgba.png": (encoded(Image.fromarray(np.concatenate([two_tone(), alpha], -1)), "PNG"),
                     Decodes()),
        "palette.png": (encoded(_palette_image(), "PNG"), Decodes()),
        "palette_transparent.png": (encoded(_palette_image(), "PNG", transparency=7), Decodes()),
        "one_bit.png": (encoded(one_bit, "PNG"), Decodes(black.top, white.bottom)),
        "gray16.png": (encoded(gray16, "PNG"), grayish),
        "rgb16.png": (png_bytes(two_tone(dtype=np.uint16) * 257), Decodes()),
        "static.gif": (encoded(_palette_image(), "GIF"), Decodes()),
        "animated.gif": (_animation("GIF"), Decodes()),
        "animated.png": (_animation("PNG"), Decodes()),
        "animated.webp": (_animation("WEBP", lossless=True), Decodes()),
        "lossless.webp": (encoded(rgb, "WEBP", lossless=True), Decodes()),
        "rgb24.bmp": (encoded(rgb, "BMP"), Decodes()),
        "palette8.bmp": (encoded(_palette_image(), "BMP"), Decodes()),  # TF alone gives indices
        "one_bit.bmp": (encoded(one_bit, "BMP"), Decodes(black.top, white.bottom)),
        "rgb.tif": (encoded(rgb, "TIFF"), Decodes()),
        "gray16.tiff": (encoded(gray16, "TIFF"), grayish),
        "cmyk.tiff": (encoded(rgb.convert("CMYK"), "TIFF"), Decodes()),
        "rgb.ppm": (encoded(rgb, "PPM"), Decodes()),
        "rgb.tga": (encoded(rgb, "TGA"), Decodes()),
        "rgb.jp2": (encoded(rgb, "JPEG2000"), Decodes()),
        # Content that does not match the extension is decoded by its content.
        "png_inside.jpg": (encoded(rgb, "PNG"), Decodes()),
        "jpeg_inside.png": (encoded(rgb, "JPEG", **jpeg), lossy),
        "tiff_inside.jpg": (encoded(rgb, "TIFF"), Decodes()),
        "scan0001": (encoded(rgb, "PNG"), Decodes()),
        "one_pixel.png": (encoded(Image.new("RGB", (1, 1), TOP), "PNG"), Decodes(TOP, TOP, (1, 1))),
        "flat_black.png": (encoded(Image.new("RGB", (WIDTH, HEIGHT)), "PNG"), black),
        "flat_white.jpg": (encoded(Image.new("L", (WIDTH, HEIGHT), 255), "JPEG"), white),
    }


def _bad_files() -> dict[str, tuple[bytes, Reported]]:
    """{name: (bytes, expected)} of regular files that must be reported."""
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    jpeg, png, tiff = encoded(rgb, "JPEG"), encoded(rgb, "PNG"), encoded(rgb, "TIFF")
    return {
        "empty.jpg": (b"", Reported("zero bytes")),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], Reported("truncated JPEG")),
        "truncated.png": (png[: len(png) // 2], Reported("truncated PNG")),
        "header_only.png": (png[:20], Reported("truncated or damaged PNG")),
        "truncated.tif": (tiff[: len(tiff) // 2], Reported("truncated TIFF")),
        "no_end.png": (png[:-2], Reported("TensorFlow cannot decode it")),
        "notes.jpg": ("Meeting notes: bring the photos.\n".encode(), Reported("looks like text")),
        "lfs.png": (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64
                    + b"\nsize 12\n", Reported("Git LFS pointer")),
        "download.jpg": (b"<!DOCTYPE html><html><body>403 Forbidden</body></html>",
                         Reported("HTML page")),
        "vector.svg": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
                       Reported("SVG")),
        "noise.bin": (bytes([0, 1, 2, 254]) * 64, Reported("unrecognised data")),
        "iphone.heic": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64),
                        Reported("HEIC")),
        "float.tif": (encoded(Image.fromarray(np.ones((8, 8), np.float32)), "TIFF"),
                      Reported("colour mode 'F'")),
        "huge.png": (flat_png_bytes(8100, 8000), Reported("image too large: 8100 x 8000")),
        # A few bytes that claim 100000 x 100000 pixels: refused before any decoding.
        "bomb.png": (_png(100_000, 100_000, 8, 0, zlib.compress(bytes(100))),
                     Reported("image too large: over")),
    }


# Relative to the corpus root: never classes, never images, never reported.
SYSTEM_FILES = (
    "train/.DS_Store", "train/cats/.DS_Store", "train/cats/._rgb.jpg", "train/cats/Thumbs.db",
    "train/cats/desktop.ini", "train/cats/rgb.jpg~", "train/cats/.hidden.png",
    "train/.ipynb_checkpoints/rgb-checkpoint.jpg", "train/cats/.ipynb_checkpoints/rgb-checkpoint.jpg",
    "train/__MACOSX/cats/._rgb.jpg", "test/.Trash-1000/files/rgb.jpg",
)


def write_corpus(root: str) -> dict[str, Decodes | Reported]:
    """Writes the corpus under `root` (train and test splits) and returns the expected
    outcome of every train file, by absolute path."""
    expected: dict[str, Decodes | Reported] = {}

    def write(relative: str, data: bytes, outcome=None):
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        if outcome is not None:
            expected[path] = outcome

    good, bad = _good_files(), _bad_files()
    for name, (data, outcome) in {**good, **bad}.items():
        write(f"train/cats/{name}", data, outcome)
    rgb_png = good["rgb.png"][0]
    write("train/café au lait/crème brûlée.png", rgb_png, Decodes())
    write("train/Ωmega 2/été.jpg", good["rgb.jpg"][0], good["rgb.jpg"][1])
    for relative in SYSTEM_FILES:
        write(relative, rgb_png if relative.endswith((".jpg", ".png")) else b"\x00\x05\x16\x07junk")
    write("train/loose.jpg", rgb_png, Reported("not in a label folder"))
    write("train/cats/burst/frame1.jpg", rgb_png)
    expected[os.path.join(root, "train/cats/burst")] = Reported("a folder inside label folder 'cats'")
    cats = os.path.join(root, "train", "cats")
    os.symlink("rgb.png", os.path.join(cats, "link.png"))
    expected[os.path.join(cats, "link.png")] = Decodes()
    os.symlink("missing.jpg", os.path.join(cats, "dangling.jpg"))
    expected[os.path.join(cats, "dangling.jpg")] = Reported("dangling symlink -> missing.jpg")
    os.mkfifo(os.path.join(cats, "pipe.jpg"))
    expected[os.path.join(cats, "pipe.jpg")] = Reported("not a regular file")
    for label in (*CLASSES, TEST_ONLY_CLASS):
        write(f"test/{label}/image.png", rgb_png)
    return expected
