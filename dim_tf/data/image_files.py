"""The files of an image folder (`PATH/<split>/<label>/*`): which are images, how each
must be decoded, and why each of the others cannot be used.

This is the `tfds.ImageFolder` layout, with the same class list (the sorted label
folders of all splits, so a label index means the same class in every split) and
the same order of images (sorted per label, then shuffled with
`random.Random(split)`): a tree that `tfds.ImageFolder` reads completely gives
identical records. We list the files ourselves because `tfds.ImageFolder` would
silently drop every file not named .jpg/.jpeg/.png and make hidden folders
(`.ipynb_checkpoints`) classes; here every file is either an image or a
`BadImage` with a reason, except operating-system and editor clutter, which is
never a class and never an image.

Only file headers are read here (Pillow opens images lazily), so listing is
cheap and a huge or hostile file costs no memory: its size is known before any
decoding. A file whose header was read by an earlier listing, and which has not
changed since, is not read again (`file_check_cache`). No TensorFlow in this module.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import random
import stat
import warnings

import numpy as np
from PIL import Image

from dim_tf.data import file_check_cache

# Refused before decoding: a decoded image costs 3-4 bytes per pixel, times the
# input pipeline's parallel decodes. 64 megapixels covers camera photos
# (a 50 MP sensor is 8688 x 5792); larger images are panoramas, scans or
# decompression bombs, and the encoders see 32 or 64 pixel images anyway.
MAX_PIXELS = 64_000_000

# Formats TensorFlow's decode_image reads correctly in every mode (checked by
# tests/faults/test_hostile_images.py), except animated WebP. Pillow decodes the
# others (BMP, whose palette TF ignores, TIFF, PPM, TGA, ICO, JPEG 2000, AVIF, ...)
# to PNG first.
TF_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP"})
# Pillow colour modes we convert to 8-bit gray/RGB(A); "F" (float) has no
# defined value range, LAB/HSV need a colour-management decision.
_PILLOW_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX",
                           "CMYK", "YCbCr", "I", "I;16", "I;16L", "I;16B", "I;16N"})
# Operating-system and editor files that are never classes and never images
# (besides every hidden name: .DS_Store, ._* AppleDouble files, .ipynb_checkpoints).
_SYSTEM_NAMES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx",
                           "$recycle.bin", "system volume information", "icon\r"})
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"),
    (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """An image to train on: its path, label index, and whether Pillow must decode
    it (a format TensorFlow cannot decode correctly) instead of TensorFlow."""

    path: str
    label: int
    via_pillow: bool = False


@dataclasses.dataclass(frozen=True)
class BadImage:
    """A file (or folder) that cannot be used, and why, phrased for the user."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class SplitListing:
    """Every entry of one split folder: images, unusable files, the number of
    operating-system/editor files left out, and the file check in progress."""

    images: tuple[ImageFile, ...]
    bad: tuple[BadImage, ...]
    ignored: int
    check: file_check_cache.FolderCheck


def is_system_file(name: str) -> bool:
    """True for hidden names (.DS_Store, ._IMG.jpg, .ipynb_checkpoints), Thumbs.db,
    desktop.ini, __MACOSX, and editor backups (photo.jpg~)."""
    return name.startswith(".") or name.lower() in _SYSTEM_NAMES or name.endswith("~")


def _visible_folders(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory)
                  if not is_system_file(n) and os.path.isdir(os.path.join(directory, n)))


def split_names(root: str) -> list[str]:
    """The split folders of `root` (sorted, without hidden or system folders)."""
    return _visible_folders(root)


def label_names(root: str) -> tuple[str, ...]:
    """The class list: sorted label folders of all splits (as `tfds.ImageFolder`)."""
    return tuple(sorted({label for split in split_names(root)
                         for label in _visible_folders(os.path.join(root, split))}))


def list_split(root: str, split: str, labels: tuple[str, ...],
               max_pixels: int = MAX_PIXELS) -> SplitListing:
    """Every file under `root/split`, each an ImageFile or a BadImage.

    `labels` is the class list (`label_names(root)`) that label indices refer to.
    Images keep `tfds.ImageFolder`'s order; unusable entries are sorted by path.
    Headers checked by an earlier listing (of files not changed since) are not read
    again; the listing's `check` carries on to the decode check (`file_check_cache`).
    """
    split_dir = os.path.join(root, split)
    check = file_check_cache.FolderCheck(split_dir, max_pixels)
    label_index = {name: index for index, name in enumerate(labels)}
    candidates, bad, ignored = [], [], 0
    for entry in _entries(split_dir):  # os.scandir: types (and stats) without a call per file
        name, path = entry.name, entry.path
        if is_system_file(name):
            ignored += 1
        elif not _is_dir(entry):
            problem = _stat_problem(path)
            bad.append(BadImage(path, problem or (
                f"not in a label folder: images go in {split_dir}{os.sep}<label>{os.sep}")))
        else:
            try:
                entries = _entries(path)
            except OSError as error:
                bad.append(BadImage(path, f"cannot list this label folder: {error.strerror}"))
                continue
            for file in entries:
                if is_system_file(file.name):
                    ignored += 1
                elif _is_dir(file):
                    bad.append(BadImage(file.path, _nested_folder_reason(file.path, name, path)))
                else:
                    candidates.append((file, label_index[name]))
    # tfds.ImageFolder's order: sorted by label and name, then this seeded shuffle.
    random.Random(split).shuffle(candidates)
    images = []
    for file, label in candidates:
        header = check.header(file.path, _stat_or_none(file),
                              lambda: _header_problem(file.path, max_pixels))
        if isinstance(header, str):
            bad.append(BadImage(file.path, header))
        else:
            images.append(ImageFile(file.path, label, via_pillow=header))
    return SplitListing(tuple(images), tuple(sorted(bad, key=lambda b: b.path)), ignored, check)


def _entries(directory: str) -> list[os.DirEntry]:
    with os.scandir(directory) as entries:
        return sorted(entries, key=lambda entry: entry.name)


def _is_dir(entry: os.DirEntry) -> bool:
    """Whether `entry` is a folder or a link to one (as os.path.isdir: False on errors)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _stat_or_none(entry: os.DirEntry) -> os.stat_result | None:
    try:
        return entry.stat()
    except OSError:  # a dangling link, a file removed since the listing: the header check says
        return None


def _nested_folder_reason(folder: str, label: str, label_dir: str) -> str:
    try:
        count = f"{len(os.listdir(folder))} file(s)"
    except OSError as error:
        count = f"unreadable: {error.strerror}"
    return (f"a folder inside label folder {label!r} ({count}, not used): images must be "
            f"directly in {label_dir}{os.sep}")


def _stat_problem(path: str) -> str | None:
    """Why `path` cannot be read as a regular file, or None if it can."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if os.path.islink(path):
            target = os.readlink(path)
            if error.errno == errno.ENOENT:
                return f"dangling symlink -> {target}"
            return f"broken symlink -> {target} ({error.strerror})"
        return f"cannot read: {error.strerror}"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, socket or device would block or never end)"
    return None


def probe(path: str, label: int, max_pixels: int = MAX_PIXELS) -> ImageFile | BadImage:
    """`path` as an image of class `label`, or the reason it cannot be used, from its
    header only.

    Truncated or damaged image data is not seen here (that needs a full decode:
    `decode_failure`), but sizes are: nothing larger than `max_pixels` is decoded.
    """
    reason = _header_problem(path, max_pixels)
    if isinstance(reason, str):
        return BadImage(path, reason)
    return ImageFile(path, label, via_pillow=reason)


def _header_problem(path: str, max_pixels: int) -> str | bool:
    """The reason `path` cannot be used, else whether Pillow must decode it."""
    problem = _stat_problem(path)
    if problem:
        return problem
    if os.path.getsize(path) == 0:
        return "zero bytes (an empty file: an interrupted copy or download?)"
    try:
        with warnings.catch_warnings():  # size and EXIF warnings: we check ourselves
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                kind, mode, (width, height) = image.format, image.mode, image.size
                animated = getattr(image, "is_animated", False)
    except Image.DecompressionBombError:
        return (f"image too large: over {2 * Image.MAX_IMAGE_PIXELS:,} pixels > the limit of "
                f"{max_pixels:,} (refused without decoding, to keep memory bounded): downscale it")
    except (OSError, ValueError, SyntaxError) as error:
        head = _head(path)
        if _sniff(head) == "JPEG XL":  # Pillow has no JPEG XL plugin; TensorFlow decodes it
            return False
        return _unreadable_reason(head, error)
    if width * height > max_pixels:
        return (f"image too large: {width} x {height} = {width * height:,} pixels > the limit of "
                f"{max_pixels:,} (refused without decoding, to keep memory bounded): downscale it")
    if kind == "WEBP" and animated:
        return True  # TF 2.21's decode_image corrupts the heap on animated WebP (crash)
    if kind in TF_FORMATS:
        return False
    if mode not in _PILLOW_MODES:
        return (f"{kind} image in colour mode {mode!r}, which has no defined conversion to "
                "8-bit RGB: convert it to an 8-bit PNG or JPEG")
    return True


def _head(path: str, size: int = 512) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def _sniff(head: bytes) -> str | None:
    """The file type its first bytes announce (images and common non-images)."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return "HEIC" if brand in _HEIF_BRANDS else "AVIF" if brand in (b"avif", b"avis") else "video"
    return None


def _unreadable_reason(head: bytes, error: Exception) -> str:
    """Why a file whose header Pillow cannot read is not usable, as specifically as
    its first bytes allow."""
    kind = _sniff(head)
    lowered = head.lstrip().lower()
    if kind == "HEIC":
        return ("HEIC/HEIF image (iPhone photos): neither TensorFlow nor Pillow decodes it "
                "here; convert it to JPEG or PNG")
    if kind == "video":
        return "not an image: an MP4/QuickTime video"
    if kind is not None:
        return f"truncated or damaged {kind}: its header cannot be read ({error})"
    if head.startswith(b"version https://git-lfs"):
        return "not an image: a Git LFS pointer (fetch the real file with `git lfs pull`)"
    if lowered.startswith((b"<!doctype html", b"<html")):
        return "not an image: an HTML page (a failed download?)"
    if b"<svg" in lowered:
        return "SVG vector image: TensorFlow and Pillow do not rasterise it; convert it to PNG"
    if head.startswith(b"%PDF"):
        return "not an image: a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "not an image: a ZIP archive (unpack it)"
    text = _as_text(head)
    if text is not None:
        return f"not an image (looks like text: {text[:40]!r})"
    return f"not an image (unrecognised data starting with {head[:8].hex(' ')})"


def _as_text(head: bytes) -> str | None:
    """`head` as text if it is printable UTF-8 (allowing a character cut at the end)."""
    if b"\x00" in head:
        return None
    for cut in range(4):
        try:
            text = head[:len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        printable = sum(c.isprintable() or c in "\t\r\n" for c in text)
        return text if text and printable >= 0.95 * len(text) else None
    return None


def decode_failure(path: str) -> str | None:
    """Why the image data of `path` (whose header was fine) does not decode, from a
    full Pillow decode; None if Pillow decodes it."""
    kind = _sniff(_head(path)) or "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                kind = image.format or kind
                image.load()
    except (OSError, ValueError, SyntaxError) as error:
        if "truncated" in str(error).lower():
            return f"truncated {kind}: the file ends inside the image data ({error})"
        return f"damaged {kind} data ({error})"
    return None


def pillow_png(path: str) -> bytes:
    """The first frame of `path`, decoded by Pillow, as PNG bytes in a mode TensorFlow
    decodes exactly (8-bit gray, gray+alpha, RGB or RGBA)."""
    with Image.open(path) as image:
        image.load()
        mode = image.mode
        if mode.startswith("I"):  # 16-bit (or int) gray: the top 8 bits, rounded
            pixels = np.asarray(image, dtype=np.float64)
            image = Image.fromarray(np.round(np.clip(pixels, 0, 65535) / 257).astype(np.uint8))
        elif mode in ("P", "PA"):
            image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
        elif mode == "1":
            image = image.convert("L")
        elif mode in ("La", "RGBa"):
            image = image.convert(mode.upper())
        elif mode not in ("L", "LA", "RGB", "RGBA"):  # CMYK, YCbCr, RGBX
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()
