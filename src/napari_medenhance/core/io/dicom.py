"""DICOM: one series (a folder of files, or one multi-frame file) as a volume in physical
units, slices sorted along the slice normal."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .patient import Reorientation, lps_to_world, reorient, split_geometry, world_to_lps
from .volume import DICOM_SUFFIXES, Volume, damaged, output_dtype, rescale, stem


def has_dicom_marker(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def dicom_files_in(folder: Path, limit: int | None = None) -> list[Path]:
    """DICOM files directly inside ``folder`` (not recursive), sorted by name.

    ``.dcm``/``.dicom``/``.ima`` files count by name; other files only with the 'DICM' marker.
    DICOMDIR (an index, no pixels) and hidden files are skipped. ``limit`` stops early.
    """
    found: list[Path] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name.upper() == "DICOMDIR" or not entry.is_file():
            continue
        p = Path(entry.path)
        if p.suffix.lower() in DICOM_SUFFIXES or has_dicom_marker(p):
            found.append(p)
            if limit is not None and len(found) >= limit:
                break
    return found


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder with at least one DICOM file in it (cheap: stops at one)."""
    p = Path(path)
    return p.is_dir() and bool(dicom_files_in(p, limit=1))


def _dcm_header(p: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    marker = has_dicom_marker(p)
    try:
        # defer_size: big values (the pixels) are skipped, but their presence is still known.
        ds = pydicom.dcmread(p, defer_size="1 KB", force=not marker)
    except InvalidDicomError as err:
        raise ValueError(f"{p} is not a DICOM file ({err})") from err
    except Exception as err:  # noqa: BLE001 - truncated/garbage files fail in many ways
        raise ValueError(f"{p} is not a readable DICOM file: it looks truncated or corrupt "
                         f"({type(err).__name__}: {err})") from err
    if not marker and not any(k in ds for k in ("SOPClassUID", "Modality", "Rows", "SeriesInstanceUID")):
        # force=True "reads" any bytes; without the marker and without DICOM attributes it is not
        raise ValueError(f"{p} is not a DICOM file (no 'DICM' marker, no DICOM attributes); "
                         "remove it from the folder")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if "Rows" in ds and "Columns" in ds:  # an image whose pixels (the last element) are cut?
            raise ValueError(f"{p} has no pixel data although it describes an image (Rows, "
                             "Columns): it looks truncated or corrupt, or was saved without its "
                             "pixels; copy or export it again")
        raise ValueError(f"{p} has no pixel data (a DICOM report, structured report or "
                         "presentation state?); remove it from the folder or open an image file")
    _check_pixel_length(ds, p)
    return ds


#: Deflated Explicit VR Little Endian: the whole dataset after the file meta is zlib-compressed.
_DEFLATED = "1.2.840.10008.1.2.1.99"


def _check_pixel_length(ds: Any, p: Path) -> None:
    """Raise ``damaged`` when the pixel data element declares more bytes than the file holds.

    Checked on the header (the pixels are deferred), so a cut file of a series read lazily is
    reported now, not when a later job reaches its slice.
    """
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts == _DEFLATED:  # offsets count in the inflated stream, not in the file
        return
    for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if key not in ds:
            continue
        try:
            elem = ds.get_item(key, keep_deferred=True)  # the raw element: offset and length
        except TypeError:  # pydicom < 3 reads the value here; decoding reports a cut file
            return
        length, tell = getattr(elem, "length", None), getattr(elem, "value_tell", None)
        if length is None or tell is None or length == 0xFFFFFFFF:  # undefined: encapsulated
            return
        size = p.stat().st_size
        if tell + length > size:
            raise damaged(p, f"its pixel data need bytes {tell} to {tell + length}, the file "
                             f"has {size}")
        return


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
                      name: str | None = None, orient: bool = False) -> Volume:
    """Read DICOM files that make up one series (or one multi-frame file) as a volume.

    Slices are sorted by their position along the slice normal (``ImagePositionPatient`` ·
    (row × column direction cosines)); without positions, by InstanceNumber. Pixels become
    physical values (``raw * RescaleSlope + RescaleIntercept``, HU for CT; dtype rule in the
    module docstring). One file with one frame gives a 2-D ``(Y, X)`` volume.

    The geometry of a positioned series is its place in the patient world (LPS, napari order;
    ``spacing``, ``origin``, ``direction``: :mod:`.patient`); ``orient=True`` also turns the
    array so that axial slices are on axis 0 (a sagittal or coronal series is transposed).

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
    out = None if rgb else output_dtype(raw, lo, hi, [s.slope for s in ordered], [s.inter for s in ordered])
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
    direction = None
    if len(ordered) > 1 and positioned and not rgb:
        # Patient space (module .patient): sagittal or coronal series are turned so that the
        # slider is the axial axis; an oblique or tilted series keeps a direction.
        m0 = lps_to_world(affine)
        ro, m = reorient(m0, data.shape[-3:]) if orient else (Reorientation(), m0)
        if not ro.identity:
            data = ro.apply(data)
            labels = ("z", "y", "x")
        spacing, origin, direction = split_geometry(m, [spacing[p] for p in ro.perm])
        affine = world_to_lps(m)
        meta.update(reorient=ro.as_meta(), patient_space=True)
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
    vol_name = name or (stem(paths[0]) if len(paths) == 1 else paths[0].parent.name)
    return Volume(data=data, spacing=spacing, axis_labels=labels, units="mm", rgb=rgb,
                  origin=origin, format="dicom", meta=meta, name=vol_name, direction=direction)


def _pixels(p: Path) -> np.ndarray:
    import pydicom

    # force as for the header: files without the 'DICM' preamble (ACR-NEMA style) are accepted there
    ds = pydicom.dcmread(p, force=not has_dicom_marker(p))
    try:
        return ds.pixel_array
    except Exception as err:  # noqa: BLE001 - missing decoder plugins raise several types
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", ts)
        if ts is not None and getattr(ts, "is_compressed", True) is False:  # no decoder involved
            raise damaged(p, f"its pixels do not decode: {err}") from err
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
    return rescale(arr, s.slope, s.inter, out)


def _load_frames(ordered: list[_Slice], out: np.dtype | None,
                 plane_shape: tuple[int, ...]) -> np.ndarray:
    arr = _pixels(ordered[0].path)  # one multi-frame file: decode once
    if arr.shape[1:] != plane_shape:
        raise ValueError(f"{ordered[0].path} holds frames of shape {arr.shape[1:]}, expected {plane_shape}")
    return np.stack([rescale(arr[s.frame], s.slope, s.inter, out) for s in ordered])
