"""Reading and writing volumes with their physical geometry: TIFF, NIfTI, DICOM series, zarr.

Everything here is Qt- and napari-free so the CLI, batch jobs and dask workers share it; the
napari reader/writer (``napari_medenhance._io_napari``) is a thin layer over it.

Conventions
-----------
* **Axis order.** :class:`Volume.data` is in napari order ``(..., Z, Y, X[, C])``: the last two
  axes are the rows (Y) and columns (X) of a plane, a trailing colour axis only when ``rgb``.
  ``spacing`` and ``origin`` have one entry per axis *excluding* the colour axis, in the same
  order, so they are napari's ``scale`` and ``translate``.
* **NIfTI.** The napari axes are the NIfTI voxel axes *reversed*, nothing else: nibabel voxel
  ``(i, j, k)`` → napari ``(k, j, i)`` (``(i, j, k, t)`` → ``(t, k, j, i)``), i.e. ``data =
  nifti_array.T``. No flips and no reorientation: the affine stays untouched in ``meta``, so
  ``volume.data[k, j, i]`` is the voxel the affine places at ``affine @ (i, j, k, 1)``, and
  writing back is the exact inverse (C-order bytes of the napari array *are* the Fortran-order
  NIfTI bytes). ``spacing`` is the header zooms reversed; ``origin`` is the affine's translation
  reversed, ``(affine[2, 3], affine[1, 3], affine[0, 3])``, which is the true world position of
  voxel 0 only for axis-aligned affines; for oblique or flipped affines napari shows the voxel
  grid unrotated (the affine is kept for writing).
* **DICOM.** ``(Z, Y, X)`` = (slice sorted by position along the slice normal ``row × column``
  direction cosines, ascending; row; column). ``spacing = (slice step, PixelSpacing[0],
  PixelSpacing[1])`` in mm; ``origin`` is the first pixel's position in the slice frame
  ``(IPP·normal, IPP·column_cosines, IPP·row_cosines)`` (plain patient z, y, x for axial
  slices). ``meta["affine_lps"]`` maps napari ``(z, y, x, 1)`` indices to patient LPS mm.
* **Intensities.** Stored values are rescaled to physical units (CT → Hounsfield units) with
  ``raw * slope + intercept``. The result is int16 when slope and intercept are integers and
  every storable raw value (from the bit depth, not the pixels, so lazy and eager reads agree)
  lands in the int16 range; otherwise float32 (float64 for 32-bit raw data or float64 files).
  Identity scaling keeps the stored dtype.
* **Writing** is atomic: a temporary file (or folder, for zarr) beside the target, then
  ``os.replace``. Large and dask arrays are written in blocks of planes (never materialised
  whole) for TIFF, NIfTI and zarr.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Volume",
    "is_dicom_folder",
    "read_dicom_series",
    "read_volume",
    "supported_suffixes",
    "writable_suffixes",
    "write_volume",
]

_READ_SUFFIXES = (".tif", ".tiff", ".nii", ".nii.gz", ".dcm", ".zarr")
_WRITE_SUFFIXES = (".tif", ".tiff", ".nii", ".nii.gz", ".zarr")
#: DICOM files often have these suffixes; files with other names are recognised by the 'DICM'
#: marker at byte 128 (numbered files such as ``IM0001`` or ``1.2.840....320``).
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: Blocks of planes read/written at once when streaming: big enough to amortise a dask compute
#: or a gzip flush, small enough to stay far below memory.
_BLOCK_BYTES = 32 * 2**20


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

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin) or (0.0,) * len(self.spacing)
        self.axis_labels = tuple(self.axis_labels)


def supported_suffixes() -> tuple[str, ...]:
    """File suffixes :func:`read_volume` reads (a folder of DICOM files is read too)."""
    return _READ_SUFFIXES


def writable_suffixes() -> tuple[str, ...]:
    """File suffixes :func:`write_volume` writes."""
    return _WRITE_SUFFIXES


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _stem(path: Path) -> str:
    name = path.name.rstrip("/")
    for suffix in (".nii.gz", ".ome.tiff", ".ome.tif", *_READ_SUFFIXES, *_DICOM_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def _formats_hint() -> str:
    return (f"supported: {', '.join(_READ_SUFFIXES)} files and folders holding one DICOM series")


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def read_volume(path: str | os.PathLike, *, lazy: bool = True) -> Volume:
    """Read an image file (or a DICOM series folder) with its spacing, origin and units.

    Parameters
    ----------
    path
        ``.tif``/``.tiff`` (ImageJ, OME or tifffile metadata for the spacing), ``.nii``/
        ``.nii.gz``, a ``.dcm`` file (one image, possibly multi-frame), a folder holding the
        files of one DICOM series, or a ``.zarr`` array (or OME-Zarr image).
    lazy
        True: pixels are read on demand (``np.memmap`` for uncompressed TIFF/NIfTI, a dask
        array otherwise, one chunk per DICOM file). False: a numpy array in memory.

    Returns
    -------
    Volume
        ``data`` in napari order ``(..., Z, Y, X[, C])``; see the module docstring for how each
        format's axes map to it (NIfTI: voxel axes reversed, no flips).

    Raises
    ------
    ValueError
        Missing path, unknown suffix, a folder without DICOM files or with several series,
        slices of different sizes/orientations or at the same position, files that are not
        DICOM or hold no pixels, pixels that need a decoder that is not installed.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"no such file or folder: {p}; {_formats_hint()}")
    suffix = _suffix(p)
    if suffix == ".zarr" or (p.is_dir() and any((p / f).exists() for f in ("zarr.json", ".zarray", ".zgroup"))):
        return _read_zarr(p, lazy)
    if p.is_dir():
        files = _dicom_files_in(p)
        if not files:
            raise ValueError(f"folder {p} holds no DICOM files (.dcm or files with the 'DICM' "
                             f"marker); {_formats_hint()}")
        return read_dicom_series(files, lazy=lazy, name=p.name)
    if suffix in (".tif", ".tiff"):
        return _read_tiff(p, lazy)
    if suffix in (".nii", ".nii.gz"):
        return _read_nifti(p, lazy)
    if suffix in _DICOM_SUFFIXES or _has_dicom_marker(p):
        return read_dicom_series([p], lazy=lazy, name=_stem(p))
    raise ValueError(f"cannot read {p.name!r}: unknown file type {suffix or '(no suffix)'!r}; "
                     f"{_formats_hint()}")


def _fit(values: Sequence[float] | None, n: int, fill: float) -> tuple[float, ...]:
    """The last ``n`` entries of ``values``, padded at the front with ``fill``."""
    vals = [float(v) for v in (values or ())][-n:] if n else []
    return tuple([fill] * (n - len(vals)) + vals)


def _default_labels(n: int) -> tuple[str, ...]:
    base = ("t", "z", "y", "x")
    if n <= 4:
        return base[4 - n:]
    return tuple(f"d{i}" for i in range(n - 4)) + base


_UNIT_ALIASES = {
    "micron": "µm", "microns": "µm", "um": "µm", "µm": "µm", "\u00b5m": "µm", "\u03bcm": "µm",
    "\\u00b5m": "µm", "micrometer": "µm", "mm": "mm", "millimeter": "mm", "nm": "nm",
    "nanometer": "nm", "cm": "cm", "m": "m", "meter": "m",
}


_CM_PER_UNIT = {"mm": 0.1, "µm": 1e-4, "nm": 1e-7, "cm": 1.0, "m": 100.0}


def _norm_unit(unit: Any) -> str | None:
    if unit is None:
        return None
    u = str(unit).strip()
    if u.lower() in ("", "pixel", "pixels", "px", "unknown", "none"):
        return None
    return _UNIT_ALIASES.get(u.lower(), _UNIT_ALIASES.get(u, u))


def _output_dtype(raw: np.dtype, lo: float, hi: float, slopes: Sequence[float],
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


def _rescale(arr: np.ndarray, slope: float, inter: float, dtype: np.dtype | None) -> np.ndarray:
    if dtype is None:
        return arr
    out = arr.astype(np.float64) * slope + inter
    if dtype.kind in "iu":
        out = np.rint(out)  # exact already (integral slope/intercept); rint guards float noise
    return out.astype(dtype)


def _iter_blocks(shape: tuple[int, ...], itemsize: int, plane_ndim: int) -> Iterator[tuple]:
    """Index tuples covering ``shape`` in C order, each at most ``_BLOCK_BYTES`` (or one plane).

    A plane is the last ``plane_ndim`` axes (2, or 3 with a colour axis). Concatenating the
    C-order bytes of the blocks gives the C-order bytes of the whole array, so they can be
    streamed into a file one after the other.
    """
    if len(shape) <= plane_ndim or math.prod(shape) * itemsize <= _BLOCK_BYTES:
        yield ()
        return
    sub = math.prod(shape[1:]) * itemsize
    if sub <= _BLOCK_BYTES:
        k = max(1, _BLOCK_BYTES // max(sub, 1))
        for start in range(0, shape[0], k):
            yield (slice(start, min(start + k, shape[0])),)
    else:
        for i in range(shape[0]):
            for rest in _iter_blocks(shape[1:], itemsize, plane_ndim):
                yield (i, *rest)


def _block(data: Any, index: tuple) -> np.ndarray:
    """``data[index]`` as numpy (computes a dask block)."""
    block = data[index] if index else data
    if hasattr(block, "compute") and not isinstance(block, np.ndarray):
        block = block.compute()
    return np.asarray(block)


# ---- TIFF ----------------------------------------------------------------------------------

# ImageJ hyperstack metadata worth carrying over: physical spacing, units, timing, display range.
_IMAGEJ_KEYS = ("spacing", "unit", "finterval", "fps", "min", "max")
#: A private TIFF tag (65000-65535 are free for private use) holding write_volume's exact
#: spacing/origin in ImageJ files, whose description belongs to ImageJ.
_PRIVATE_TAG = 65000
_TIFF_LABELS = {"T": "t", "Z": "z", "C": "c", "Y": "y", "X": "x"}


def _read_tiff(p: Path, lazy: bool) -> Volume:
    import tifffile

    try:
        tif = tifffile.TiffFile(p)
    except Exception as err:  # tifffile raises its own TiffFileError and struct errors
        raise ValueError(f"{p} is not a readable TIFF file ({err})") from err
    with tif:
        series = tif.series[0]
        axes, shape = series.axes, tuple(series.shape)
        page = tif.pages.first
        tags = page.tags
        kw: dict = {}
        res: dict[str, float] = {}
        res_unit = None
        if "XResolution" in tags and "YResolution" in tags:
            # The raw rationals, so the pixel size is written back bit for bit.
            kw["resolution"] = (tags["XResolution"].value, tags["YResolution"].value)
            for key, (num, den) in zip("XY", kw["resolution"]):
                if num and den:
                    res[key] = den / num  # pixels per unit -> size of a pixel
            if "ResolutionUnit" in tags:
                kw["resolutionunit"] = res_unit = int(tags["ResolutionUnit"].value)
        ij = (tif.imagej_metadata or {}) if tif.is_imagej else None
        if ij is not None:
            kw["imagej"] = True
            kw["metadata"] = {"axes": axes, **{k: ij[k] for k in _IMAGEJ_KEYS if k in ij}}
        shaped = tif.shaped_metadata[0] if tif.is_shaped and tif.shaped_metadata else None
        ome = tif.ome_metadata if tif.is_ome else None
        photometric = int(page.photometric)
        ours = shaped.get("medenhance") if isinstance(shaped, dict) else None
        if ours is None and _PRIVATE_TAG in tags:
            try:
                ours = json.loads(tags[_PRIVATE_TAG].value).get("medenhance")
            except (TypeError, ValueError, AttributeError):
                ours = None

    rgb = (axes.endswith("S") or photometric == 2) and shape[-1] in (3, 4)
    n = len(shape) - int(rgb)
    labels = _tiff_labels(axes[:n])
    spacing = [1.0] * n
    known: list[int] = []  # axes whose spacing the standard metadata gave
    units: str | None = None
    for key, lab in (("X", "x"), ("Y", "y")):
        if key in res and lab in labels:
            spacing[labels.index(lab)] = res[key]
            known.append(labels.index(lab))
    if ij is not None:
        units = _norm_unit(ij.get("unit"))
        for key, lab in (("spacing", "z"), ("finterval", "t")):
            if lab in labels and ij.get(key):
                spacing[labels.index(lab)] = float(ij[key])
                known.append(labels.index(lab))
    elif ome:
        units = _ome_spacing(ome, labels, spacing, known) or units
    elif res and res_unit in (2, 3):  # INCH, CENTIMETER: a physical length, given in µm
        factor = 25400.0 if res_unit == 2 else 10000.0
        for i in known:
            spacing[i] *= factor
        units = "µm"
    origin = [0.0] * n
    if isinstance(ours, dict) and len(ours.get("spacing", ())) == n:
        # Written by write_volume: exact floats (no rational rounding) and the origin. Trusted
        # only while they agree with the standard tags, which another program may have edited.
        mine = [float(v) for v in ours["spacing"]]
        u = _norm_unit(ours.get("units"))
        conv = 1.0 if units in (None, u) else (
            _CM_PER_UNIT[units] / _CM_PER_UNIT[u] if units in _CM_PER_UNIT and u in _CM_PER_UNIT else None)
        if conv is not None and all(math.isclose(mine[i], spacing[i] * conv, rel_tol=1e-5) for i in known):
            spacing, units = mine, u
            origin = _fit(ours.get("origin"), n, 0.0)
            if len(ours.get("axis_labels") or ()) == n:
                labels = tuple(ours["axis_labels"])
    data = _tiff_data(p, shape, lazy)
    return Volume(data=data, spacing=tuple(spacing), axis_labels=labels, units=units, rgb=rgb,
                  origin=tuple(origin), format="tiff",
                  meta={"tiff_kw": kw, "photometric": photometric, "axes": axes}, name=_stem(p))


def _tiff_labels(axes: str) -> tuple[str, ...]:
    labels: list[str | None] = [_TIFF_LABELS.get(a) for a in axes]
    # Unknown axes (tifffile's Q, I...) get the napari defaults, the one nearest the plane first.
    free = [lab for lab in ("z", "t", "c") if lab not in labels]
    for i in reversed(range(len(labels))):
        if labels[i] is None or labels.count(labels[i]) > 1:
            labels[i] = free.pop(0) if free else f"d{i}"
    return tuple(labels)  # type: ignore[arg-type]


def _ome_spacing(ome_xml: str, labels: tuple[str, ...], spacing: list[float],
                 known: list[int]) -> str | None:
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return None
    unit = None
    for lab in ("x", "y", "z"):
        size = pixels.get(f"PhysicalSize{lab.upper()}")
        if size and lab in labels:
            spacing[labels.index(lab)] = float(size)
            known.append(labels.index(lab))
            unit = _norm_unit(pixels.get(f"PhysicalSize{lab.upper()}Unit", "µm"))
    return unit


def _tiff_data(p: Path, shape: tuple[int, ...], lazy: bool) -> Any:
    import tifffile

    if not lazy:
        return tifffile.imread(p)
    try:
        data = tifffile.memmap(p, mode="r")  # big stacks are read plane by plane
        if data.shape == shape:
            return data
    except ValueError:  # compressed or non-contiguous pixels cannot be memory-mapped
        pass
    try:
        import dask.array as da
        import zarr

        store = tifffile.imread(p, aszarr=True)
        arr = zarr.open(store, mode="r")
        if isinstance(arr, zarr.Array) and tuple(arr.shape) == shape:
            return da.from_zarr(arr)
    except Exception:  # noqa: BLE001 - any failure of the lazy route: read it whole instead
        pass
    return tifffile.imread(p)


# ---- NIfTI ---------------------------------------------------------------------------------

_NIFTI_UNITS = {"mm": "mm", "micron": "µm", "meter": "m"}


def _token(kind: str, p: Path) -> str:
    """A dask name for a file's pixels: same file and version -> same name, else different."""
    st = p.stat()
    key = f"{p.resolve()}|{st.st_mtime_ns}|{st.st_size}".encode()
    return f"{kind}-{hashlib.sha1(key).hexdigest()[:16]}"


class _ScaledProxy:
    """A nibabel ArrayProxy seen through ``astype(dtype)``, for ``dask.array.from_array``."""

    def __init__(self, proxy: Any, dtype: np.dtype) -> None:
        self.proxy, self.dtype = proxy, np.dtype(dtype)
        self.shape, self.ndim = tuple(proxy.shape), len(proxy.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self.proxy[index]).astype(self.dtype, copy=False)


def _read_nifti(p: Path, lazy: bool) -> Volume:
    import nibabel as nib

    gz = p.name.lower().endswith(".gz")
    try:
        # keep_file_open for gzip: dask reads chunks in order, and a kept handle only
        # decompresses forward instead of from the start for every chunk.
        img = nib.load(p, mmap=lazy, keep_file_open=bool(lazy and gz))
    except Exception as err:  # nibabel: ImageFileError, HeaderDataError, gzip/EOF errors
        raise ValueError(f"{p} is not a readable NIfTI file ({err})") from err
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{p} is a {type(img).__name__}, not NIfTI-1/2; convert it to .nii.gz")
    hdr = img.header
    raw = hdr.get_data_dtype()
    if raw.fields is not None:
        raise ValueError(f"{p} stores RGB/structured voxels ({raw}), which are not supported; "
                         "convert it to an RGB .tif")
    shape = tuple(int(s) for s in img.shape)
    # nibabel moves scl_slope/scl_inter from the loaded header into the data proxy
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    if raw.kind in "iu":
        info = np.iinfo(raw)
        lo, hi = float(info.min), float(info.max)
    else:
        lo = hi = 0.0
    out = _output_dtype(raw, lo, hi, [slope], [inter])
    dtype = np.dtype(raw.newbyteorder("=")) if out is None else out
    if not lazy:
        data = np.asarray(img.dataobj)
        data = (data if out is None else data.astype(out)).T  # Fortran on disk: .T is C-order
    elif out is None and not gz:
        data = np.asanyarray(img.dataobj).T  # memmap of the file
    else:
        import dask.array as da

        plane = max(1, shape[0] * (shape[1] if len(shape) > 1 else 1) * dtype.itemsize)
        chunks = list(shape)
        if len(shape) >= 3:
            chunks[2] = max(1, min(shape[2], _BLOCK_BYTES // plane))
            chunks[3:] = [1] * (len(shape) - 3)
        data = da.from_array(_ScaledProxy(img.dataobj, dtype), chunks=tuple(chunks), lock=gz,
                             meta=np.empty((0,) * len(shape), dtype=dtype),
                             name=_token("nifti", p)).T
    zooms = tuple(float(z) for z in hdr.get_zooms())[: len(shape)]
    xyz_unit, t_unit = hdr.get_xyzt_units()
    affine = np.asarray(img.affine, dtype=np.float64)
    n = len(shape)
    origin = [0.0] * n
    for a in range(min(3, n)):  # voxel axis a -> napari axis n-1-a
        origin[n - 1 - a] = float(affine[a, 3])
    return Volume(
        data=data, spacing=zooms[::-1], axis_labels=_default_labels(n),
        # The NIfTI world is in mm by convention; many writers leave the unit 'unknown'.
        units=_NIFTI_UNITS.get(xyz_unit, "mm"), rgb=False, origin=tuple(origin), format="nifti",
        meta={"nifti_header": hdr.copy(), "affine": affine, "nifti_version": 2 if isinstance(img, nib.Nifti2Image) else 1,
              "time_unit": {"sec": "s", "msec": "ms", "usec": "µs"}.get(t_unit)},
        name=_stem(p),
    )


# ---- DICOM ---------------------------------------------------------------------------------


def _has_dicom_marker(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _dicom_files_in(folder: Path, limit: int | None = None) -> list[Path]:
    """DICOM files directly inside ``folder`` (not recursive), sorted by name.

    ``.dcm``/``.dicom``/``.ima`` files count by name; other files only with the 'DICM' marker.
    DICOMDIR (an index, no pixels) and hidden files are skipped. ``limit`` stops early.
    """
    found: list[Path] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name.upper() == "DICOMDIR" or not entry.is_file():
            continue
        p = Path(entry.path)
        if p.suffix.lower() in _DICOM_SUFFIXES or _has_dicom_marker(p):
            found.append(p)
            if limit is not None and len(found) >= limit:
                break
    return found


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder with at least one DICOM file in it (cheap: stops at one)."""
    p = Path(path)
    return p.is_dir() and bool(_dicom_files_in(p, limit=1))


def _dcm_header(p: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    marker = _has_dicom_marker(p)
    try:
        # defer_size: big values (the pixels) are skipped, but their presence is still known.
        ds = pydicom.dcmread(p, defer_size="1 KB", force=not marker)
    except InvalidDicomError as err:
        raise ValueError(f"{p} is not a DICOM file ({err})") from err
    except Exception as err:  # noqa: BLE001 - truncated/garbage files fail in many ways
        raise ValueError(f"{p} is not a readable DICOM file ({type(err).__name__}: {err})") from err
    if not marker and not any(k in ds for k in ("SOPClassUID", "Modality", "Rows", "SeriesInstanceUID")):
        # force=True "reads" any bytes; without the marker and without DICOM attributes it is not
        raise ValueError(f"{p} is not a DICOM file (no 'DICM' marker, no DICOM attributes); "
                         "remove it from the folder")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ValueError(f"{p} has no pixel data (a DICOM report, structured report or "
                         "presentation state?); remove it from the folder or open an image file")
    return ds


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return vals if len(vals) == n else None


def _frame_attr(ds: Any, frame: int | None, seq: str, key: str) -> Any:
    """``key`` from the per-frame or shared functional group ``seq`` (enhanced DICOM), else top."""
    groups = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        pf = ds.PerFrameFunctionalGroupsSequence
        if frame < len(pf):
            groups.append(pf[frame])
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    for g in groups:
        items = getattr(g, seq, None)
        if items and key in items[0]:
            return items[0][key].value
    return ds[key].value if key in ds else None


@dataclass
class _Slice:
    path: Path
    frame: int | None  # frame index in a multi-frame file, None for single-frame files
    ipp: tuple[float, ...] | None
    iop: tuple[float, ...] | None
    spacing: tuple[float, ...] | None
    slope: float
    inter: float
    instance: int | None


def _slices_of(ds: Any, p: Path) -> list[_Slice]:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    out = []
    for f in range(frames):
        fr = f if frames > 1 else None
        slope = _frame_attr(ds, fr, "PixelValueTransformationSequence", "RescaleSlope")
        inter = _frame_attr(ds, fr, "PixelValueTransformationSequence", "RescaleIntercept")
        out.append(_Slice(
            path=p, frame=fr,
            ipp=_floats(_frame_attr(ds, fr, "PlanePositionSequence", "ImagePositionPatient"), 3),
            iop=_floats(_frame_attr(ds, fr, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
            spacing=_floats(_frame_attr(ds, fr, "PixelMeasuresSequence", "PixelSpacing"), 2)
            or _floats(ds.get("ImagerPixelSpacing"), 2),
            slope=float(slope) if slope not in (None, "") else 1.0,
            inter=float(inter) if inter not in (None, "") else 0.0,
            instance=int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None,
        ))
    return out


def read_dicom_series(files: Sequence[str | os.PathLike], *, lazy: bool = True,
                      name: str | None = None) -> Volume:
    """Read DICOM files that make up one series (or one multi-frame file) as a volume.

    Slices are sorted by their position along the slice normal (``ImagePositionPatient`` ·
    (row × column direction cosines)); without positions, by InstanceNumber. Pixels become
    physical values (``raw * RescaleSlope + RescaleIntercept``, HU for CT; dtype rule in the
    module docstring). One file with one frame gives a 2-D ``(Y, X)`` volume.

    Raises ``ValueError`` for files of several series, slices of different sizes or
    orientations, two slices at one position, non-DICOM files, files without pixels.
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise ValueError("no DICOM files given")
    headers = {p: _dcm_header(p) for p in paths}
    series: dict[str, list[Path]] = {}
    for p, ds in headers.items():
        series.setdefault(str(ds.get("SeriesInstanceUID", "(none)")), []).append(p)
    if len(series) > 1:
        parts = "; ".join(
            f"{uid} ({headers[ps[0]].get('SeriesDescription', '') or 'no description'}, "
            f"{len(ps)} files, e.g. {ps[0].name})" for uid, ps in series.items())
        raise ValueError(f"these files belong to {len(series)} DICOM series: {parts}. Put each "
                         "series in its own folder (or open one file) and read them one at a time")
    sizes = {(int(ds.get("Rows", 0)), int(ds.get("Columns", 0)), int(ds.get("SamplesPerPixel", 1)))
             for ds in headers.values()}
    if len(sizes) > 1:
        raise ValueError(f"the slices of this series have different sizes (rows, columns, "
                         f"samples) {sorted(sizes)}: it mixes images (scout/localizer?); move the "
                         "odd files out of the folder")
    rows, cols, samples = sizes.pop()
    multiframe = [p for p, ds in headers.items() if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if multiframe and len(paths) > 1:
        raise ValueError(f"{multiframe[0].name} is a multi-frame file in a folder of "
                         f"{len(paths)} files; open the multi-frame file on its own")
    slices = [s for p in paths for s in _slices_of(headers[p], p)]

    first = headers[paths[0]]
    rgb = samples in (3, 4)
    iops = [s.iop for s in slices if s.iop is not None]
    if iops and len(iops) != len(slices):
        raise ValueError("some slices of this series have an ImageOrientationPatient and some "
                         "do not; the series is inconsistent, remove the odd files")
    if iops and np.ptp(np.asarray(iops), axis=0).max() > 1e-4:
        raise ValueError("the slices of this series have different orientations "
                         "(ImageOrientationPatient); it mixes planes (e.g. a localizer): move "
                         "the odd files out, or read them as separate series")
    row_cos = np.asarray(iops[0][:3]) if iops else np.array([1.0, 0.0, 0.0])
    col_cos = np.asarray(iops[0][3:]) if iops else np.array([0.0, 1.0, 0.0])
    normal = np.cross(row_cos, col_cos)
    pixel = slices[0].spacing or (1.0, 1.0)
    meta: dict[str, Any] = {}
    positioned = all(s.ipp is not None for s in slices) and bool(iops)
    if len(slices) == 1:
        order, step = [0], None
    elif positioned:
        d = np.array([np.dot(s.ipp, normal) for s in slices])
        order = list(np.argsort(d, kind="stable"))
        diffs = np.diff(d[order])
        if (diffs < 1e-3).any():
            i = int(np.argmin(diffs))
            a, b = slices[order[i]], slices[order[i + 1]]
            raise ValueError(
                f"two slices lie at the same position ({d[order[i]]:.3f} mm along the slice "
                f"normal): {a.path.name}{'' if a.frame is None else f' frame {a.frame}'} and "
                f"{b.path.name}{'' if b.frame is None else f' frame {b.frame}'}. The series holds "
                "several volumes (echoes, phases, time points or a repeat); split it into one "
                "folder per volume")
        step = float(np.median(diffs))
        meta["slice_positions"] = [float(v) for v in d[order]]
        if diffs.max() - diffs.min() > max(1e-3, 0.01 * step):
            meta["irregular_slices"] = True
            warnings.warn(f"DICOM slice spacing varies from {diffs.min():.4g} to "
                          f"{diffs.max():.4g} mm (missing slices?); using the median "
                          f"{step:.4g} mm", UserWarning, stacklevel=2)
    else:
        instances = [s.instance for s in slices]
        if all(i is not None for i in instances) and len(set(instances)) == len(instances):
            order = list(np.argsort(instances, kind="stable"))
        else:
            order = list(range(len(slices)))
        step = None
    if step is None and len(slices) > 1:
        for key in ("SpacingBetweenSlices", "SliceThickness"):
            v = _frame_attr(first, 0 if multiframe else None, "PixelMeasuresSequence", key)
            if v not in (None, "") and float(v) > 0:
                step = float(v)
                break
        else:
            step = 1.0
    ordered = [slices[i] for i in order]

    # dtype from the bit depth, so lazy and eager reads agree without reading every pixel
    bits = int(first.get("BitsStored", first.get("BitsAllocated", 16)) or 16)
    signed = int(first.get("PixelRepresentation", 0) or 0) == 1
    if "FloatPixelData" in first or "DoubleFloatPixelData" in first:
        raw = np.dtype(np.float32 if "FloatPixelData" in first else np.float64)
        lo = hi = 0.0
    else:
        alloc = int(first.get("BitsAllocated", 16) or 16)
        raw = np.dtype(f"{'i' if signed else 'u'}{max(1, alloc // 8)}")
        lo = -(2.0 ** (bits - 1)) if signed else 0.0
        hi = 2.0 ** (bits - 1) - 1 if signed else 2.0 ** bits - 1
    out = None if rgb else _output_dtype(raw, lo, hi, [s.slope for s in ordered], [s.inter for s in ordered])
    plane_shape = (rows, cols, samples) if rgb else (rows, cols)

    if multiframe:
        data: Any = _load_frames(ordered, out, plane_shape)  # one file: decoded once
        if len(ordered) == 1:
            data = data[0]
    else:
        first_plane = _load_slice(ordered[0], out, plane_shape)  # fails now if undecodable
        if len(ordered) == 1:
            data = first_plane
        elif not lazy:
            data = np.empty((len(ordered), *plane_shape), first_plane.dtype)
            data[0] = first_plane
            for i, s in enumerate(ordered[1:], 1):
                data[i] = _load_slice(s, out, plane_shape)
        else:
            import dask
            import dask.array as da

            load = dask.delayed(_load_slice, pure=True)
            data = da.stack([da.from_array(first_plane, chunks=first_plane.shape)] + [
                da.from_delayed(load(s, out, plane_shape), shape=plane_shape,
                                dtype=first_plane.dtype) for s in ordered[1:]])

    ny, nx = float(pixel[0]), float(pixel[1])
    origin_ipp = np.asarray(ordered[0].ipp if ordered[0].ipp is not None else (0.0, 0.0, 0.0))
    thickness = _frame_attr(first, 0 if multiframe else None, "PixelMeasuresSequence", "SliceThickness")
    z_vec = normal * (float(thickness) if thickness not in (None, "") and float(thickness) > 0 else 1.0)
    if len(ordered) == 1:
        spacing: tuple[float, ...] = (ny, nx)
        labels: tuple[str, ...] = ("y", "x")
        origin: tuple[float, ...] = (float(origin_ipp @ col_cos), float(origin_ipp @ row_cos))
    else:
        spacing = (float(step), ny, nx)
        labels = ("z", "y", "x") if positioned or not multiframe else ("frame", "y", "x")
        origin = (float(origin_ipp @ normal), float(origin_ipp @ col_cos), float(origin_ipp @ row_cos))
        if positioned:
            z_vec = (np.asarray(ordered[-1].ipp) - origin_ipp) / (len(ordered) - 1)  # follows a tilt
        else:
            z_vec = normal * float(step)
    # napari index (z, y, x, 1) -> patient LPS mm; a 2-D image is the z = 0 plane
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = z_vec, col_cos * ny, row_cos * nx, origin_ipp
    center, width = first.get("WindowCenter"), first.get("WindowWidth")
    window = None
    try:
        if center is not None and width is not None:
            c = float(center[0] if hasattr(center, "__len__") and not isinstance(center, str) else center)
            w = float(width[0] if hasattr(width, "__len__") and not isinstance(width, str) else width)
            window = (c, w) if w > 0 else None
    except (TypeError, ValueError, IndexError):
        window = None
    # No patient identifiers in meta: it travels into layer metadata and output files.
    meta.update({
        "modality": str(first.get("Modality", "")),
        "series_description": str(first.get("SeriesDescription", "")),
        "series_uid": str(first.get("SeriesInstanceUID", "")),
        "rescale_type": str(first.get("RescaleType", "HU" if first.get("Modality") == "CT" else "")),
        "window": window,
        "image_orientation": [float(v) for v in (*row_cos, *col_cos)],
        # napari (z, y, x, 1) index -> patient LPS mm (a 2-D image is the z = 0 plane)
        "affine_lps": affine.tolist(),
        "files": [str(s.path) for s in ordered] if not multiframe else [str(paths[0])],
    })
    vol_name = name or (_stem(paths[0]) if len(paths) == 1 else paths[0].parent.name)
    return Volume(data=data, spacing=spacing, axis_labels=labels, units="mm", rgb=rgb,
                  origin=origin, format="dicom", meta=meta, name=vol_name)


def _pixels(p: Path) -> np.ndarray:
    import pydicom

    ds = pydicom.dcmread(p)
    try:
        return ds.pixel_array
    except Exception as err:  # noqa: BLE001 - missing decoder plugins raise several types
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", ts)
        raise ValueError(
            f"could not decode the pixels of {p} (transfer syntax {ts_name}): {err}. Compressed "
            "DICOM needs a decoder: pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg "
            "(or python-gdcm)") from err


def _load_slice(s: _Slice, out: np.dtype | None, plane_shape: tuple[int, ...]) -> np.ndarray:
    arr = _pixels(s.path)
    if s.frame is not None:
        arr = arr[s.frame]
    if arr.shape != plane_shape:
        raise ValueError(f"{s.path} holds pixels of shape {arr.shape}, expected {plane_shape}")
    return _rescale(arr, s.slope, s.inter, out)


def _load_frames(ordered: list[_Slice], out: np.dtype | None,
                 plane_shape: tuple[int, ...]) -> np.ndarray:
    arr = _pixels(ordered[0].path)  # one multi-frame file: decode once
    if arr.shape[1:] != plane_shape:
        raise ValueError(f"{ordered[0].path} holds frames of shape {arr.shape[1:]}, expected {plane_shape}")
    return np.stack([_rescale(arr[s.frame], s.slope, s.inter, out) for s in ordered])


# ---- zarr ----------------------------------------------------------------------------------


def _read_zarr(p: Path, lazy: bool) -> Volume:
    import dask.array as da
    import zarr

    try:
        node = zarr.open(str(p), mode="r")
    except Exception as err:  # noqa: BLE001 - zarr raises several types for non-zarr folders
        raise ValueError(f"{p} is not a readable zarr store ({err})") from err
    attrs: dict = {}
    spacing_ngff: list[float] | None = None
    labels_ngff: list[str] | None = None
    unit_ngff = None
    if isinstance(node, zarr.Group):
        group_attrs = dict(node.attrs)
        multiscales = (group_attrs.get("ome") or group_attrs).get("multiscales")
        if multiscales:
            ms = multiscales[0]
            ds0 = ms["datasets"][0]
            arr = node[ds0["path"]]
            for t in ds0.get("coordinateTransformations", []):
                if t.get("type") == "scale":
                    spacing_ngff = [float(v) for v in t["scale"]]
            axes = ms.get("axes") or []
            if axes and isinstance(axes[0], dict):
                labels_ngff = [a.get("name", "") for a in axes]
                unit_ngff = next((a.get("unit") for a in axes if a.get("type") == "space"), None)
        else:
            arrays = list(node.array_keys())
            if len(arrays) != 1:
                raise ValueError(f"zarr group {p} holds {len(arrays)} arrays ({arrays[:5]}); "
                                 "open the array itself (path/to/group.zarr/NAME)")
            arr = node[arrays[0]]
    else:
        arr = node
    attrs = dict(arr.attrs).get("medenhance", {}) or {}
    rgb = bool(attrs.get("rgb", False))
    n = arr.ndim - int(rgb)
    spacing = _fit(attrs.get("spacing") or (spacing_ngff[-n:] if spacing_ngff else None), n, 1.0)
    labels = tuple(attrs.get("axis_labels") or (labels_ngff[-n:] if labels_ngff else _default_labels(n)))
    data = da.from_zarr(arr) if lazy else np.asarray(arr[...])
    return Volume(data=data, spacing=spacing, axis_labels=labels,
                  units=_norm_unit(attrs.get("units") or unit_ngff), rgb=rgb,
                  origin=_fit(attrs.get("origin"), n, 0.0), format="zarr",
                  meta={"zarr_attrs": dict(arr.attrs)}, name=_stem(p))


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def write_volume(path: str | os.PathLike, data: Any, like: Volume | None = None, *,
                 spacing: Sequence[float] | None = None, origin: Sequence[float] | None = None,
                 units: str | None = None, axis_labels: Sequence[str] | None = None,
                 rgb: bool | None = None) -> Path:
    """Write ``data`` (napari order ``(..., Z, Y, X[, C])``) to ``path``, format from its suffix.

    Parameters
    ----------
    path
        ``.nii``/``.nii.gz``, ``.tif``/``.tiff`` or ``.zarr``. Parent folders are created.
    data
        numpy, memmap or dask array; dask arrays are computed a block of planes at a time.
    like
        The :class:`Volume` this data came from (e.g. the input of a denoising run): its
        spacing, origin, units, labels and colour flag are used when not given, and
        * NIfTI → ``.nii``/``.nii.gz``: its header and affine are kept exactly (sform, qform,
          codes, units, description...; only the shape and dtype follow ``data``, and scaling
          is reset since the values are written as they are), the exact inverse of
          :func:`read_volume` (napari ``(k, j, i)`` → voxel ``(i, j, k)``). A ``spacing`` that
          differs from ``like.spacing`` scales the affine's voxel columns (voxel 0 stays put).
        * DICOM → NIfTI: the affine comes from the DICOM geometry (LPS → RAS), as converters do.
        * TIFF → TIFF: its resolution/ImageJ keywords are reused when the spacing is unchanged.
    spacing, origin, units, axis_labels, rgb
        Override ``like``'s values (napari order; defaults 1.0, 0.0, None, napari defaults).

    Returns
    -------
    Path
        The written file. TIFF files carry ImageJ spacing metadata (X/Y resolution, ``spacing``
        for Z, ``unit``) when ImageJ can hold the dtype (uint8, uint16, float32), standard
        pixels-per-centimetre resolution tags otherwise, and always the exact spacing, origin
        and labels (tifffile JSON description, or a private tag in ImageJ files), so
        :func:`read_volume` gives them back unrounded.

    Raises
    ------
    ValueError
        Unknown or read-only suffix (``.dcm``), RGB data to NIfTI, dtypes NIfTI cannot store.
    """
    p = Path(path)
    suffix = _suffix(p)
    if suffix not in _WRITE_SUFFIXES:
        extra = " (writing DICOM is not supported)" if suffix in _DICOM_SUFFIXES else ""
        raise ValueError(f"cannot write {p.name!r}{extra}: use one of {', '.join(_WRITE_SUFFIXES)}")
    ndim = len(data.shape)
    if rgb is None:  # like's colour flag, when data still has its colour axis
        rgb = bool(like is not None and like.rgb and ndim == len(like.spacing) + 1
                   and data.shape[-1] in (3, 4))
    if rgb and (ndim < 3 or data.shape[-1] not in (3, 4)):
        raise ValueError(f"rgb=True needs a last axis of 3 or 4 colours, got shape {tuple(data.shape)}")
    n = ndim - int(rgb)
    sp = _fit(spacing if spacing is not None else (like.spacing if like else None), n, 1.0)
    org = _fit(origin if origin is not None else (like.origin if like else None), n, 0.0)
    if units is None and like is not None:
        units = like.units
    labels = tuple(axis_labels) if axis_labels is not None and len(axis_labels) == n else None
    if labels is None and like is not None and len(like.axis_labels) >= n:
        labels = tuple(like.axis_labels[len(like.axis_labels) - n:])
    labels = labels or _default_labels(n)
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".nii", ".nii.gz"):
        if rgb:
            raise ValueError("NIfTI output of RGB data is not supported; write it as .tif")
        _write_nifti(p, data, like, sp, org, units, spacing is not None)
    elif suffix in (".tif", ".tiff"):
        _write_tiff(p, data, like, sp, org, units, labels, bool(rgb))
    else:
        _write_zarr(p, data, sp, org, units, labels, bool(rgb))
    return p


def _atomic_file(p: Path) -> tuple[Path, Any]:
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    return Path(tmp), os.fdopen(fd, "wb")


# ---- NIfTI ---------------------------------------------------------------------------------

_NIFTI_STORABLE = {np.dtype(t) for t in (
    np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
    np.float32, np.float64, np.complex64, np.complex128)}
_UNIT_TO_NIFTI = {"mm": "mm", "µm": "micron", "m": "meter"}


def _write_nifti(p: Path, data: Any, like: Volume | None, sp: tuple[float, ...],
                 org: tuple[float, ...], units: str | None, spacing_given: bool) -> None:
    import nibabel as nib

    dtype = np.dtype(data.dtype)
    if dtype == np.bool_:
        dtype = np.dtype(np.uint8)
    elif dtype == np.float16:
        dtype = np.dtype(np.float32)  # NIfTI has no float16
    if dtype.newbyteorder("=") not in _NIFTI_STORABLE:
        raise ValueError(f"NIfTI cannot store {dtype} voxels; cast the data to int16, uint16, "
                         "int32 or float32 first")
    shape = tuple(int(s) for s in data.shape)
    nifti_shape = shape[::-1]
    n = len(shape)
    zooms = list(sp[::-1])
    header = like.meta.get("nifti_header") if like is not None and like.format == "nifti" else None
    if header is not None:
        hdr = header.copy()
        old = [float(z) for z in hdr.get_zooms()]
        old_pixdim, old_ndim = hdr["pixdim"].copy(), int(hdr["dim"][0])
        hdr.set_data_shape(nifti_shape)
        # set_data_shape resets the unused pixdim entries: keep like's bytes where they apply
        keep = len(old_pixdim) if old_ndim == n else min(old_ndim, n) + 1
        pixdim = hdr["pixdim"].copy()
        pixdim[:keep] = old_pixdim[:keep]
        hdr["pixdim"] = pixdim
        hdr.set_data_dtype(dtype.newbyteorder("="))
        slope, inter = hdr.get_slope_inter()
        if slope is not None or inter is not None:
            hdr.set_slope_inter(None, None)  # values are written as they are: no scaling
        ratio = np.ones(3)
        if spacing_given:  # a new voxel size scales the affine's voxel columns
            for a in range(min(3, n, len(old))):
                if old[a] > 0 and not math.isclose(zooms[a], old[a], rel_tol=1e-9):
                    ratio[a] = zooms[a] / old[a]
        if (ratio != 1).any():
            scale = np.diag([*ratio, 1.0])
            for get, put, code in (("get_sform", "set_sform", "sform_code"),
                                   ("get_qform", "set_qform", "qform_code")):
                if int(hdr[code]) > 0:
                    getattr(hdr, put)(getattr(hdr, get)() @ scale, code=int(hdr[code]))
            hdr.set_zooms(zooms)
    else:
        hdr = nib.Nifti1Header()
        hdr.set_data_shape(nifti_shape)
        hdr.set_data_dtype(dtype.newbyteorder("="))
        affine, code = _nifti_affine(like, shape, zooms, org)
        hdr.set_sform(affine, code=code)
        hdr.set_qform(affine, code=code)
        hdr.set_zooms(zooms)
        hdr.set_xyzt_units(xyz=_UNIT_TO_NIFTI.get(units or "mm", "unknown"),
                           t="sec" if n >= 4 else "unknown")
    disk = hdr.get_data_dtype()  # the header's byte order
    tmp, fh = _atomic_file(p)
    try:
        with fh:
            out = gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=1, mtime=0) \
                if p.name.lower().endswith(".gz") else fh
            try:
                hdr.write_to(out)
                pad = int(hdr.get_data_offset()) - out.tell()
                if pad > 0:
                    out.write(b"\x00" * pad)
                # C-order bytes of the napari array are the NIfTI's Fortran-order voxels.
                for index in _iter_blocks(shape, disk.itemsize, 2):
                    out.write(np.ascontiguousarray(_block(data, index), dtype=disk).tobytes())
            finally:
                if out is not fh:
                    out.close()
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _nifti_affine(like: Volume | None, shape: tuple[int, ...], zooms: list[float],
                  org: tuple[float, ...]) -> tuple[np.ndarray, int]:
    """(4x4 affine for NIfTI voxel (i, j, k), sform/qform code) when there is no NIfTI header."""
    n = len(shape)
    m = min(n, 3)
    if (like is not None and like.format == "dicom" and "affine_lps" in like.meta
            and len(like.spacing) == m and m >= 2):
        a = np.asarray(like.meta["affine_lps"], dtype=np.float64)  # napari (z, y, x) -> LPS
        for c in range(3 - m, 3):  # napari spacing may have changed (super-resolution...)
            old, new = like.spacing[c - (3 - m)], zooms[2 - c]
            if old > 0:
                a[:3, c] *= new / old
        aff = np.eye(4)
        aff[:3, :3] = a[:3, [2, 1, 0]]  # NIfTI voxel (i, j, k) = napari (x, y, z)
        aff[:3, 3] = a[:3, 3]
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff, 1  # LPS -> RAS
    aff = np.eye(4)
    for v in range(min(3, n)):
        aff[v, v] = zooms[v]
        aff[v, 3] = org[n - 1 - v]
    return aff, 2


# ---- TIFF ----------------------------------------------------------------------------------

_IMAGEJ_DTYPES = {np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)}
_IMAGEJ_UNIT = {"µm": "micron"}


def _write_tiff(p: Path, data: Any, like: Volume | None, sp: tuple[float, ...],
                org: tuple[float, ...], units: str | None, labels: tuple[str, ...],
                rgb: bool) -> None:
    import tifffile

    shape = tuple(int(s) for s in data.shape)
    dtype = np.dtype(data.dtype)
    n = len(shape) - int(rgb)
    axes_map = {"t": "T", "z": "Z", "c": "C", "y": "Y", "x": "X"}
    axes = "".join(axes_map.get(lab, "Q") for lab in labels) + ("S" if rgb else "")
    nbytes = math.prod(shape) * dtype.itemsize
    big = nbytes > 2**32 - 2**25
    order_ok = axes.replace("Q", "") == "".join(a for a in "TZCYXS" if a in axes) and "Q" not in axes
    imagej = (not big and order_ok and n <= 5 and "Y" in axes and "X" in axes
              and dtype in _IMAGEJ_DTYPES and (not rgb or (dtype == np.uint8 and shape[-1] == 3)))
    like_kw = dict(like.meta.get("tiff_kw", {})) if like is not None and like.format == "tiff" else {}
    same_geometry = (like is not None and len(like.spacing) == n and like.units == units
                     and all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(like.spacing, sp)))
    ours = {"spacing": list(sp), "origin": list(org), "units": units, "axis_labels": list(labels)}
    sx = sp[labels.index("x")] if "x" in labels else 1.0
    sy = sp[labels.index("y")] if "y" in labels else 1.0
    kw: dict[str, Any] = {"photometric": "rgb" if rgb else "minisblack", "bigtiff": big}
    if imagej:
        meta: dict[str, Any] = {"axes": axes}
        if same_geometry and like_kw.get("imagej"):
            meta.update({k: v for k, v in like_kw.get("metadata", {}).items() if k != "axes"})
        if "z" in labels:
            meta["spacing"] = sp[labels.index("z")]
        if "t" in labels:
            meta["finterval"] = sp[labels.index("t")]
        if units:
            meta["unit"] = _IMAGEJ_UNIT.get(units, units)
        # ImageJ reads pixels per unit with no TIFF resolution unit
        kw.update(imagej=True, metadata=meta, resolution=(1.0 / sx, 1.0 / sy), resolutionunit=1)
        # ImageJ owns the description; our exact values go into a second, private tag
        kw["extratags"] = [(_PRIVATE_TAG, "s", 0, json.dumps({"medenhance": ours}), True)]
    else:
        kw["metadata"] = {"axes": axes, "medenhance": ours}
        if units in _CM_PER_UNIT:  # standard TIFF: pixels per centimetre
            f = _CM_PER_UNIT[units]
            kw.update(resolution=(1.0 / (sx * f), 1.0 / (sy * f)), resolutionunit=3)
        else:
            kw.update(resolution=(1.0 / sx, 1.0 / sy), resolutionunit=1)
    if same_geometry and "resolution" in like_kw and like_kw.get("resolutionunit") == kw["resolutionunit"]:
        kw["resolution"] = like_kw["resolution"]  # raw rationals: bit-for-bit
    plane_ndim = 3 if rgb else 2

    def pages() -> Iterator[np.ndarray]:
        for index in _iter_blocks(shape, dtype.itemsize, plane_ndim):
            block = _block(data, index)
            lead = block.shape[: block.ndim - plane_ndim]
            for i in np.ndindex(*lead):
                yield block[i]

    tmp, fh = _atomic_file(p)
    fh.close()
    try:
        tifffile.imwrite(tmp, pages(), shape=shape, dtype=dtype, **kw)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---- zarr ----------------------------------------------------------------------------------


def _write_zarr(p: Path, data: Any, sp: tuple[float, ...], org: tuple[float, ...],
                units: str | None, labels: tuple[str, ...], rgb: bool) -> None:
    import zarr

    shape = tuple(int(s) for s in data.shape)
    dtype = np.dtype(data.dtype)
    plane_ndim = 3 if rgb else 2
    chunks = (1,) * max(0, len(shape) - plane_ndim) + shape[len(shape) - plane_ndim:]
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent))
    try:
        attrs = {"medenhance": {"spacing": list(sp), "origin": list(org), "units": units,
                                "axis_labels": list(labels), "rgb": rgb}}
        if hasattr(zarr, "create_array"):  # zarr 3
            arr = zarr.create_array(store=str(tmp), shape=shape, chunks=chunks, dtype=dtype,
                                    overwrite=True, attributes=attrs)
        else:  # zarr 2
            arr = zarr.open_array(str(tmp), mode="w", shape=shape, chunks=chunks, dtype=dtype)
            arr.attrs.update(attrs)
        for index in _iter_blocks(shape, dtype.itemsize, plane_ndim):
            arr[index if index else ...] = _block(data, index)
        if p.exists():
            old = p.with_name(f".{p.name}.old-{os.getpid()}")
            os.replace(p, old)
            os.replace(tmp, p)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
