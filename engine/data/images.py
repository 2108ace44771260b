"""Image files by content: format sniffing and decoding to 8-bit RGB.

Implements the input side of the shared protocol in docs/protocol.md
("grayscale replicated to 3 channels"): whatever the file holds, `open_rgb` returns an
8-bit RGB PIL image. Formats are recognised by their magic bytes, never by the file
extension, because real datasets ship PNG data under .jpg names.

Conversions done by `open_rgb`:
- grayscale (L, 1), palette (P), CMYK, YCbCr, LAB, HSV: PIL's conversion to RGB.
- 16-bit grayscale (I;16*): the full 0..65535 range maps linearly onto 0..255 (rounded),
  so images keep their relative brightness; no clipping.
- 32-bit integer (I): treated as 16-bit when every value lies in 0..65535 (PIL has opened
  16-bit PNGs as I); otherwise, and for float (F), the image's own min..max maps to 0..255.
- Alpha (RGBA, LA, PA, palette with transparency): composited over **black**, the
  background of radiographs and most medical scans.
- DICOM (the 'DICM' marker at byte 128, any extension or none): `dicom.read_dicom`'s 8-bit
  grayscale or RGB, by its Modality LUT, window and photometric interpretation.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from engine.data.dicom import DicomOptions, MultiFrameError, is_dicom, read_dicom

# Magic bytes at offset 0. WebP is RIFF....WEBP and is checked separately.
_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"BM", "bmp"),
)
# File extensions that belong to each content format (lower case, with the dot).
FORMAT_EXTENSIONS = {
    "jpeg": frozenset({".jpg", ".jpeg", ".jpe", ".jfif"}),
    "png": frozenset({".png"}),
    "gif": frozenset({".gif"}),
    "tiff": frozenset({".tif", ".tiff"}),
    "bmp": frozenset({".bmp", ".dib"}),
    "webp": frozenset({".webp"}),
    "dicom": frozenset({".dcm", ".dicom", ""}),  # DICOM files often have no extension at all
}
SNIFF_BYTES = 132  # enough for every magic number, DICOM's 'DICM' at byte 128 included
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_UINT16_MAX = 65535


class BadImageError(ValueError):
    """An image file that cannot be decoded (truncated, corrupt or not an image).

    Attributes:
        path: the file (or a description of the in-memory source).
        reason: what went wrong.
    """

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):
        # Keeps the two-argument constructor working through pickling (DataLoader workers).
        return (BadImageError, (self.path, self.reason))


def sniff_bytes(head: bytes) -> str | None:
    """The image format named by the first bytes of a file.

    Args:
        head: the first SNIFF_BYTES bytes of the file (or all of a shorter one).

    Returns:
        One of 'jpeg', 'png', 'gif', 'tiff', 'bmp', 'webp', 'dicom', or None when unrecognised.
    """
    if is_dicom(head):
        return "dicom"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def sniff_image_format(path: str | Path) -> str | None:
    """The image format of a file from its magic bytes (never from its extension).

    Args:
        path: the file to read.

    Returns:
        One of 'jpeg', 'png', 'gif', 'tiff', 'bmp', 'webp', 'dicom', or None when the content
        is not a recognised image (including an empty file).

    Raises:
        FileNotFoundError: when the file does not exist.
    """
    with open(path, "rb") as f:
        return sniff_bytes(f.read(SNIFF_BYTES))


def open_rgb(source: str | Path | bytes, name: str | None = None,
             dicom: DicomOptions = DicomOptions()) -> Image.Image:
    """Opens an image by its content, fully decoded, as 8-bit RGB (see the module docstring).

    Args:
        source: a file path or the file's bytes.
        name: how to name the source in errors; defaults to the path, or '<bytes>'.
        dicom: window and frame for DICOM files.

    Returns:
        A loaded PIL image in mode 'RGB'.

    Raises:
        FileNotFoundError: when `source` is a path that does not exist.
        BadImageError: when the content is not a decodable image, e.g. a truncated file.
        MultiFrameError: for a multi-frame DICOM file without `dicom.frame`.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise FileNotFoundError(f"image file not found: {source}")
    data = source if isinstance(source, bytes) else None
    try:
        if data is None and sniff_image_format(source) == "dicom":
            data = Path(source).read_bytes()
        if data is not None and is_dicom(data[:SNIFF_BYTES]):
            return Image.fromarray(read_dicom(data, label, dicom)).convert("RGB")
        with Image.open(io.BytesIO(data) if data is not None else source) as img:
            img.load()  # full decode here, so a truncated file fails now, not in a worker later
            return to_rgb(img)
    except MultiFrameError:
        raise  # a question of configuration (data.dicom_frame), not a broken file
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(label, f"cannot decode image ({type(e).__name__}: {e})") from e


def to_rgb(img: Image.Image) -> Image.Image:
    """Converts a loaded PIL image of any mode to 8-bit RGB (see the module docstring)."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode.startswith("I;16"):
        values = np.asarray(img, dtype=np.float64)
        return _gray_to_rgb(values * (255.0 / _UINT16_MAX))
    if img.mode in ("I", "F"):
        return _gray_to_rgb(_wide_to_8bit(np.asarray(img, dtype=np.float64), img.mode))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return img.convert("RGB")


def _wide_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """Scales 32-bit integer or float pixel values into 0..255 (float, not yet rounded)."""
    low, high = float(values.min()), float(values.max())
    if mode == "I" and low >= 0 and high <= _UINT16_MAX:
        return values * (255.0 / _UINT16_MAX)
    if high == low:  # a constant image: no range to stretch
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")
