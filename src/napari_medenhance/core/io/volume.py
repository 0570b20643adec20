"""The :class:`Volume` every reader returns and every writer takes, and what the format
modules share: file suffixes and names, axis defaults, spatial units, physical rescaling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

READ_SUFFIXES = (".tif", ".tiff", ".nii", ".nii.gz", ".dcm", ".zarr")
WRITE_SUFFIXES = (".tif", ".tiff", ".nii", ".nii.gz", ".zarr")
#: DICOM files often have these suffixes; files with other names are recognised by the 'DICM'
#: marker at byte 128 (numbered files such as ``IM0001`` or ``1.2.840....320``).
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


@dataclass
class Volume:
    """An image with its physical geometry, as read from (and written back to) a file.

    ``data`` is a numpy array, ``np.memmap`` or dask array in napari axis order
    ``(..., Z, Y, X[, C])``. ``spacing`` (napari ``scale``) and ``origin`` (napari
    ``translate``, the physical position of voxel 0) have one entry per axis except a trailing
    RGB axis; ``axis_labels`` likewise (e.g. ``("z", "y", "x")``). ``units`` is the spatial
    unit (``"mm"``, ``"µm"``...) or None when unknown. ``format`` is ``"tiff"``, ``"nifti"``,
    ``"dicom"`` or ``"zarr"``; ``meta`` holds what :func:`write_volume` needs to write the same
    kind of file back (NIfTI header, TIFF keywords, DICOM geometry); ``name`` is a layer name.
    ``direction`` (3×3, rows and columns in napari order, or None for the identity) turns the
    last three axes: ``world = origin + direction @ diag(spacing) @ index`` (ITK's convention;
    an oblique or gantry-tilted radiology volume, see :mod:`.patient`).
    """

    data: Any
    spacing: tuple[float, ...]
    axis_labels: tuple[str, ...]
    units: str | None = None
    rgb: bool = False
    origin: tuple[float, ...] = ()
    format: str = "tiff"
    meta: dict = field(default_factory=dict)
    name: str = ""
    direction: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin) or (0.0,) * len(self.spacing)
        self.axis_labels = tuple(self.axis_labels)
        if self.direction is not None:
            d = np.asarray(self.direction, dtype=np.float64)
            if d.shape != (3, 3) or len(self.spacing) < 3:
                raise ValueError(f"direction must be 3×3 and the volume 3-D or more; got {d.shape}")
            self.direction = tuple(tuple(float(v) for v in row) for row in d)


def supported_suffixes() -> tuple[str, ...]:
    """File suffixes :func:`read_volume` reads (a folder of DICOM files is read too)."""
    return READ_SUFFIXES


def writable_suffixes() -> tuple[str, ...]:
    """File suffixes :func:`write_volume` writes."""
    return WRITE_SUFFIXES


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def stem(path: Path) -> str:
    name = path.name.rstrip("/")
    for suffix in (".nii.gz", ".ome.tiff", ".ome.tif", *READ_SUFFIXES, *DICOM_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def damaged(path: Path, detail: str) -> ValueError:
    """The error for a file whose own structure says bytes are missing or wrong."""
    return ValueError(f"{path} looks truncated or corrupt ({detail}); copy or export it again "
                      "(an interrupted download, copy or save leaves such files)")


def formats_hint() -> str:
    return (f"supported: {', '.join(READ_SUFFIXES)} files and folders holding one DICOM series")


def fit(values: Sequence[float] | None, n: int, fill: float) -> tuple[float, ...]:
    """The last ``n`` entries of ``values``, padded at the front with ``fill``."""
    vals = [float(v) for v in (values or ())][-n:] if n else []
    return tuple([fill] * (n - len(vals)) + vals)


def default_labels(n: int) -> tuple[str, ...]:
    base = ("t", "z", "y", "x")
    if n <= 4:
        return base[4 - n:]
    return tuple(f"d{i}" for i in range(n - 4)) + base


_UNIT_ALIASES = {
    "micron": "µm", "microns": "µm", "um": "µm", "µm": "µm", "\u03bcm": "µm",
    "\\u00b5m": "µm", "micrometer": "µm", "mm": "mm", "millimeter": "mm", "nm": "nm",
    "nanometer": "nm", "cm": "cm", "m": "m", "meter": "m",
}


CM_PER_UNIT = {"mm": 0.1, "µm": 1e-4, "nm": 1e-7, "cm": 1.0, "m": 100.0}


def norm_unit(unit: Any) -> str | None:
    if unit is None:
        return None
    u = str(unit).strip()
    if u.lower() in ("", "pixel", "pixels", "px", "unknown", "none"):
        return None
    return _UNIT_ALIASES.get(u.lower(), _UNIT_ALIASES.get(u, u))


def output_dtype(raw: np.dtype, lo: float, hi: float, slopes: Sequence[float],
                  inters: Sequence[float]) -> np.dtype | None:
    """dtype of ``raw * slope + inter`` over the raw range [lo, hi]; None for identity scaling."""
    if all(s == 1 for s in slopes) and all(i == 0 for i in inters):
        return None
    if raw.kind in "iub" and all(float(v).is_integer() for v in (*slopes, *inters)):
        ends = [s * v + i for s, i in zip(slopes, inters) for v in (lo, hi)]
        if min(ends) >= -32768 and max(ends) <= 32767:
            return np.dtype(np.int16)
    wide = (raw.kind in "iu" and raw.itemsize > 2) or raw == np.float64
    return np.dtype(np.float64 if wide else np.float32)


def rescale(arr: np.ndarray, slope: float, inter: float, dtype: np.dtype | None) -> np.ndarray:
    if dtype is None:
        return arr
    out = arr.astype(np.float64) * slope + inter
    if dtype.kind in "iu":
        out = np.rint(out)  # exact already (integral slope/intercept); rint guards float noise
    return out.astype(dtype)
