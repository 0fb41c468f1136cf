"""The one X-ray reader: PNG/JPEG/TIFF/BMP in any PIL mode, 16-bit data, and DICOM, and the
resizing every consumer shares. No torch here, so ``split_dataset.py`` can validate images
without importing it. ``DECODER`` lists the functions whose code decides the decoded pixels
(``image_cache.decoder_version`` hashes them). File helpers live in ``files.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
# A chest radiograph is at most ~4300 x 4300 pixels; refuse anything claiming more than this
# before allocating memory (PIL's own bomb check only raises at twice its warning limit).
MAX_PIXELS = 60_000_000


def is_image_name(name: str) -> bool:
    """Whether a file name has one of ``IMAGE_EXTENSIONS`` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _scale_to_unit(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as e:  # pragma: no cover - pydicom is in requirements.txt
        raise ValueError(f"{path}: DICOM needs pydicom (pip install pydicom pylibjpeg "
                         f"pylibjpeg-libjpeg)") from e
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - pydicom raises many types; we report them all
        raise ValueError(f"{path}: unreadable DICOM ({type(e).__name__}: {e})") from e
    if pixels.ndim != 2:
        raise ValueError(f"{path}: expected a single-frame grayscale DICOM, got pixel array of "
                         f"shape {pixels.shape}")
    a = apply_modality_lut(pixels, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        a = apply_voi_lut(a, ds)
    a = _scale_to_unit(a)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        a = 1.0 - a  # MONOCHROME1: low values are displayed white
    return a


def read_xray(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read one radiograph as a 2-D grayscale array.

    Returns float32 ``(H, W)`` in ``[0, 1]``, bright = dense (as displayed). Scaling:
    8-bit data / 255; 16-bit data (PIL modes ``I;16*`` and ``I``) / 65535, so 16-bit precision is
    kept until that single division; float images and DICOM are min-max scaled after DICOM's
    modality LUT (rescale slope/intercept) and VOI LUT/window; MONOCHROME1 is inverted.
    Colour, palette, CMYK, 1-bit and alpha modes are converted to luminance (``L``); the EXIF
    orientation is applied. Files claiming more than ``max_pixels`` are refused from their
    header, before pixel memory is allocated.

    Raises ``ValueError`` (bad content) or ``OSError`` (missing/unreadable file) whose message
    names the file and the reason.
    """
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "missing (or a broken link)"
        raise OSError(f"{path}: not a readable file ({what})")
    if _is_dicom(path):
        return _read_dicom(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ValueError(f"{path}: image claims {w}x{h} = {w * h:,} pixels, more than "
                                 f"the limit of {max_pixels:,} (decompression bomb?)")
            im.load()
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                a = np.asarray(im).astype(np.float32)
                if a.min() < 0 or a.max() > 65535:
                    return _scale_to_unit(a)
                return a / np.float32(65535.0)
            if mode == "F":
                return _scale_to_unit(np.asarray(im))
            if mode != "L":
                if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
                    im = im.convert("RGBA").convert("RGB")
                im = im.convert("L")
            return np.asarray(im, dtype=np.float32) / np.float32(255.0)
    except ValueError:
        raise
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path}: refused as a decompression bomb ({e})") from e
    except (Image.UnidentifiedImageError, SyntaxError) as e:
        raise ValueError(f"{path}: not a decodable image ({e})") from e
    except OSError as e:
        raise ValueError(f"{path}: truncated or corrupt image data ({e})") from e


def load_resized(path: str | os.PathLike, size: int) -> np.ndarray:
    """``read_xray`` then resize to ``(size, size)`` (area interpolation), as uint8 ``(S, S)``.

    The 8-bit quantisation happens here, after resizing: this is where 16-bit data gives up its
    extra precision (the network sees 8-bit-equivalent data, as in the study).
    """
    return resize_uint8(read_xray(path), size)


def resize_uint8(a: np.ndarray, size: int) -> np.ndarray:
    """A ``read_xray`` array resized to ``(size, size)`` (area interpolation when shrinking) and
    quantised to uint8: the network's input, as ``load_resized`` makes it."""
    if a.shape != (size, size):
        interp = cv2.INTER_AREA if min(a.shape) >= size else cv2.INTER_LINEAR
        a = cv2.resize(a, (size, size), interpolation=interp)
    return np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)


def load_resized_or_reason(job: tuple[str, int]) -> tuple[np.ndarray | None, str | None]:
    """``(image, None)`` or ``(None, reason)`` for ``(path, size)``: a process-pool job."""
    try:
        return load_resized(job[0], job[1]), None
    except (ValueError, OSError) as e:
        return None, str(e)


# The code that decides a decoded image's pixels (image_cache.decoder_version hashes its source)
DECODER = (_is_dicom, _scale_to_unit, _read_dicom, read_xray, load_resized, resize_uint8)
