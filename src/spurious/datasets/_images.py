"""Decoding one image file into an 8-bit RGB :class:`PIL.Image.Image`, robustly.

Everything a feature-extraction job over millions of files can meet is either converted to RGB
(CMYK, gray, palette, alpha, 1-bit, 16-bit, float, EXIF-rotated) or turned into one exception type,
:class:`ImageDecodeError`, with a short reason that the caller can count and report.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "ImageDecodeError", "load_image"]

_log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
"""File extensions (lower case, with the dot) that listing treats as images; matched case-insensitively."""

_GRAY16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class ImageDecodeError(ValueError):
    """A file exists and can be read, but is not a decodable image.

    Raised for corrupt or truncated data, zero-byte files, non-image files and decompression bombs.

    Attributes:
        reason: Short human-readable cause, e.g. ``"truncated file"``; this is what
            :meth:`ImageDataset.__getitem__ <spurious.datasets.ImageDataset.__getitem__>` reports.
        path: The file that failed, or ``None``.
    """

    def __init__(self, reason: str, path: str | None = None) -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"cannot decode image {path}: {reason}" if path is not None else reason)

    def __reduce__(self) -> tuple[type[ImageDecodeError], tuple[str, str | None]]:
        return (type(self), (self.reason, self.path))


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Read an image file fully into memory as an 8-bit RGB image.

    Conversions (the output is always mode ``"RGB"``, ``uint8`` per channel):

    - EXIF orientation is applied first (:func:`PIL.ImageOps.exif_transpose`); an unreadable EXIF
      block is ignored (the pixels are still good), not an error.
    - ``RGBA``, ``LA``, ``PA`` and palette images with transparency: the alpha channel is
      **dropped** (the colour stored under transparent pixels is kept), exactly like torchvision's
      default loader (``Image.convert("RGB")``), so features match those of ``ImageFolder``-based
      reference pipelines. No compositing onto a background.
    - ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``: ``Image.convert("RGB")``.
    - 16-bit gray (``I;16``, ``I;16B``, ...): scaled ``v * 255 / 65535`` with rounding
      (``65535 -> 255``, ``32768 -> 128``), not clipped.
    - 32-bit integer ``I``: if the maximum is above 255 the image is taken as 16-bit and scaled as
      above (values clipped to ``[0, 65535]`` first); otherwise the values are already 8-bit.
      A very dark 16-bit image whose maximum is <= 255 is thus read as 8-bit; the format does
      not say which it is.
    - 32-bit float ``F``: NaN -> 0; maximum <= 1 means a ``[0, 1]`` image (times 255);
      maximum <= 255 means ``[0, 255]``; otherwise a 16-bit range (times 255/65535). Clipped to
      ``[0, 255]`` and rounded.
    - 16-bit-per-channel colour PNGs are reduced to 8 bits by Pillow's decoder (high byte).
    - Multi-frame files (GIF, TIFF): the first frame.

    Truncated files are errors: this function never enables ``ImageFile.LOAD_TRUNCATED_IMAGES``
    (if other code sets that global, Pillow will pad truncated files instead). Decompression bombs
    follow Pillow's limit ``Image.MAX_IMAGE_PIXELS`` (an error above twice the limit, Pillow's
    ``DecompressionBombWarning`` between once and twice).

    Args:
        path: Image file.

    Returns:
        A fully loaded, file-independent ``PIL.Image.Image`` in mode ``"RGB"``.

    Raises:
        FileNotFoundError: ``path`` does not exist (other ``OSError`` s, e.g. permissions, likewise
            come from opening the file).
        ImageDecodeError: the file is empty, not an image, corrupt, truncated, a decompression
            bomb, or in a mode that cannot be converted to RGB.
    """
    spath = os.fspath(path)
    with open(spath, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise ImageDecodeError("empty file (0 bytes)", spath)
        try:
            im = Image.open(fh)
            im.load()
        except Image.DecompressionBombError as e:
            raise ImageDecodeError(f"decompression bomb ({e})", spath) from e
        except UnidentifiedImageError as e:
            raise ImageDecodeError("not an image (unrecognised format)", spath) from e
        except OSError as e:
            msg = str(e)
            if "truncated" in msg:
                raise ImageDecodeError(f"truncated file ({msg})", spath) from e
            raise ImageDecodeError(f"corrupt image data ({msg})", spath) from e
        except Exception as e:  # noqa: BLE001 - Pillow plugins raise many types on bad data
            raise ImageDecodeError(f"corrupt image ({type(e).__name__}: {e})", spath) from e
        try:
            ImageOps.exif_transpose(im, in_place=True)
        except Exception as e:  # noqa: BLE001 - bad EXIF must not cost a good image
            _log.debug("ignoring unreadable EXIF orientation of %s: %s", spath, e)
        try:
            return _to_rgb(im)
        except Exception as e:  # noqa: BLE001
            raise ImageDecodeError(
                f"cannot convert mode {im.mode!r} to RGB ({type(e).__name__}: {e})", spath
            ) from e


def _gray8(values: np.ndarray) -> Image.Image:
    """A 2-D uint8 array as an RGB image (gray replicated)."""
    return Image.fromarray(np.ascontiguousarray(values, dtype=np.uint8)).convert("RGB")


def _scale16(values: np.ndarray) -> np.ndarray:
    """Map 16-bit values ``[0, 65535]`` to ``[0, 255]`` with rounding (integer arithmetic)."""
    v = np.clip(values, 0, 65535).astype(np.uint32)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert a loaded image of any Pillow mode to 8-bit RGB (see :func:`load_image`)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _GRAY16_MODES:
        return _gray8(_scale16(np.asarray(im)))
    if mode == "I":
        arr = np.asarray(im)
        if arr.size and int(arr.max()) > 255:
            return _gray8(_scale16(arr))
        return _gray8(np.clip(arr, 0, 255))
    if mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = float(arr.max()) if arr.size else 0.0
        if top <= 1.0:
            arr = arr * 255.0
        elif top > 255.0:
            arr = arr * (255.0 / 65535.0)
        return _gray8(np.rint(np.clip(arr, 0.0, 255.0)))
    if mode == "La":  # premultiplied gray+alpha: Pillow has no direct conversion
        return im.split()[0].convert("RGB")
    return im.convert("RGB")
