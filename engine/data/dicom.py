"""DICOM files as 8-bit images: the format radiology data comes in (read with pydicom).

Recognised by content: the 'DICM' marker at byte 128 (`is_dicom`), with or without a .dcm
extension. Compressed transfer syntaxes need their decoders: `pip install medft[dicom]` brings
pydicom with pylibjpeg and its JPEG, JPEG-LS, JPEG 2000 and RLE plugins.

`read_dicom` turns the stored pixels into what `images.open_rgb` hands on:
- colour (3 samples per pixel): RGB as pydicom gives it (YBR converted), wider than 8 bits
  scaled from 0..2^BitsStored-1 onto 0..255;
- grayscale: the Modality LUT (rescale slope/intercept) first, then the window: the configured
  `data.dicom_window` (center, width), else the file's VOI LUT Sequence (its output range onto
  0..1), else the file's first WindowCenter/WindowWidth, else the image's own min..max. The
  window is DICOM's linear function (PS3.3 C.11.2.1.2.1). MONOCHROME1 (white = low values) is
  inverted, so that air is black as in MONOCHROME2; then 0..1 maps onto 0..255 (rounded).
- a multi-frame file is a `MultiFrameError` (a ValueError, never skipped as a bad image) unless
  `data.dicom_frame` picks the frame; an undecodable file is a `DicomDecodeError`, which
  `open_rgb` reports as a bad image (skipped and counted, or an error, by `data.on_bad_image`).
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DICM_OFFSET = 128  # the preamble's length; 'DICM' follows it
_INSTALL = "reading DICOM needs pydicom and its decoders: pip install 'medft[dicom]'"


def is_dicom(head: bytes) -> bool:
    """True when `head` (at least 132 bytes of a file) carries the DICOM marker."""
    return head[DICM_OFFSET:DICM_OFFSET + 4] == b"DICM"


@dataclass(frozen=True)
class DicomOptions:
    """`data.dicom_window` (center, width) or None, and `data.dicom_frame` or None."""

    window: tuple[float, float] | None = None
    frame: int | None = None

    @classmethod
    def of(cls, cfg) -> "DicomOptions":
        """The options of a `DataConfig`."""
        return cls(tuple(cfg.dicom_window) if cfg.dicom_window is not None else None, cfg.dicom_frame)


class DicomDecodeError(ValueError):
    """A DICOM file whose pixels cannot be decoded (truncated, corrupt, no decoder installed)."""


class MultiFrameError(ValueError):
    """A multi-frame DICOM file without `data.dicom_frame`, or a frame it does not have."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.reason = reason


def _pydicom():
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as error:
        raise ImportError(f"{_INSTALL} ({error})") from error
    return pydicom, apply_modality_lut, apply_voi_lut


def read_dicom(data: bytes, name: str, options: DicomOptions = DicomOptions()) -> np.ndarray:
    """The file's image as uint8 (H, W) grayscale or (H, W, 3) RGB (module docstring).

    Raises:
        MultiFrameError: for a multi-frame file without a frame to pick, or a frame out of range.
        DicomDecodeError: when the file or its pixel data cannot be decoded.
    """
    pydicom, _, _ = _pydicom()
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as error:  # pydicom raises many types for a broken header
        raise DicomDecodeError(f"cannot read DICOM ({type(error).__name__}: {error})") from error
    if frames > 1 and options.frame is None:
        raise MultiFrameError(name, f"DICOM file with {frames} frames: set data.dicom_frame to pick one")
    if options.frame is not None and options.frame >= frames:
        raise MultiFrameError(name, f"data.dicom_frame={options.frame} but the file has {frames} frame(s)")
    try:
        pixels = ds.pixel_array
    except Exception as error:  # truncated data, unknown transfer syntax, missing decoder plugin...
        raise DicomDecodeError(f"cannot decode DICOM pixel data ({type(error).__name__}: {error})") from error
    if frames > 1:
        pixels = pixels[options.frame]
    return dicom_to_8bit(pixels, ds, options.window)


def dicom_to_8bit(pixels: np.ndarray, ds, window: tuple[float, float] | None = None) -> np.ndarray:
    """Stored pixels of one frame -> uint8 (module docstring); `ds` supplies the LUT attributes."""
    bits = int(ds.get("BitsStored", 8) or 8)
    if int(ds.get("SamplesPerPixel", 1) or 1) == 3:
        scaled = pixels.astype(np.float64) * (255.0 / (2 ** bits - 1))
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    _, apply_modality_lut, apply_voi_lut = _pydicom()
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if window is not None:
        unit = window_linear(values, *window)
    elif "VOILUTSequence" in ds:
        lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        unit = np.asarray(apply_voi_lut(values, ds, prefer_lut=True), np.float64) / (2 ** lut_bits - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        unit = window_linear(values, _first(ds.WindowCenter), _first(ds.WindowWidth))
    else:
        low, high = values.min(), values.max()
        unit = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        unit = 1.0 - unit
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def window_linear(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's linear VOI window onto 0..1: 0 up to c - 0.5 - (w-1)/2, 1 above c - 0.5 + (w-1)/2."""
    if width < 1:
        raise DicomDecodeError(f"window width must be >= 1, got {width}")
    if width == 1:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _first(value) -> float:
    """The first of a multi-valued attribute (a file may list several windows)."""
    return float(value[0]) if isinstance(value, Sequence) and not isinstance(value, str) else float(value)


def dicom_header(data: bytes) -> tuple[str, int, str]:
    """(photometric interpretation, bits stored, transfer syntax name), or what cannot be read as '?'."""
    pydicom, _, _ = _pydicom()
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:  # the decode in the data check names the file and the reason
        return "?", 0, "unreadable header"
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return str(ds.get("PhotometricInterpretation", "?")), int(ds.get("BitsStored", 0) or 0), \
        (syntax.name if syntax is not None else "?")
