"""NIfTI-1/2 (``.nii``, ``.nii.gz``): voxels in patient space (LPS world, turned to face it, see
:mod:`.patient`); header and affine are kept for writing back exactly."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .patient import (Reorientation, consistent_spacing, nifti_to_world, reorient, split_geometry,
                      world_matrix, world_to_nifti)
from .streaming import BLOCK_BYTES, atomic_file, iter_blocks, read_block
from .volume import Volume, damaged, default_labels, output_dtype, stem

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


def read_nifti(p: Path, lazy: bool, orient: bool = False) -> Volume:
    """A NIfTI file as a :class:`Volume` (conventions: :mod:`napari_medenhance.core.io`);
    ``orient`` turns the array to face the patient world (:mod:`.patient`)."""
    import nibabel as nib

    gz = p.name.lower().endswith(".gz")
    try:
        # keep_file_open for gzip: dask reads chunks in order, and a kept handle only
        # decompresses forward instead of from the start for every chunk.
        img = nib.load(p, mmap=lazy, keep_file_open=bool(lazy and gz))
    except Exception as err:  # nibabel: ImageFileError, HeaderDataError, gzip/EOF errors
        raise ValueError(f"{p} is not a readable NIfTI file: another format, or it looks "
                         f"truncated or corrupt ({type(err).__name__}: {err})") from err
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{p} is a {type(img).__name__}, not NIfTI-1/2; convert it to .nii.gz")
    hdr = img.header
    raw = hdr.get_data_dtype()
    if raw.fields is not None:
        raise ValueError(f"{p} stores RGB/structured voxels ({raw}), which are not supported; "
                         "convert it to an RGB .tif")
    shape = tuple(int(s) for s in img.shape)
    # A cut file fails only when its voxels are read: for a lazy read, deep inside a later job.
    # (The proxy has the file's voxel offset; the loaded header's is reset to 0.)
    offset = int(getattr(img.dataobj, "offset", 0))
    _check_complete(p, gz, offset + math.prod(shape) * raw.itemsize)
    # nibabel moves scl_slope/scl_inter from the loaded header into the data proxy
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    if raw.kind in "iu":
        info = np.iinfo(raw)
        lo, hi = float(info.min), float(info.max)
    else:
        lo = hi = 0.0
    out = output_dtype(raw, lo, hi, [slope], [inter])
    dtype = np.dtype(raw.newbyteorder("=")) if out is None else out
    if not lazy:
        try:
            data = np.asarray(img.dataobj)
        except (EOFError, OSError, zlib.error) as err:  # a gzip stream broken mid-way
            raise damaged(p, f"reading its voxels failed: {type(err).__name__}: {err}") from err
        data = (data if out is None else data.astype(out)).T  # Fortran on disk: .T is C-order
    elif out is None and not gz:
        data = np.asanyarray(img.dataobj).T  # memmap of the file
    else:
        import dask.array as da

        plane = max(1, shape[0] * (shape[1] if len(shape) > 1 else 1) * dtype.itemsize)
        chunks = list(shape)
        if len(shape) >= 3:
            chunks[2] = max(1, min(shape[2], BLOCK_BYTES // plane))
            chunks[3:] = [1] * (len(shape) - 3)
        data = da.from_array(_ScaledProxy(img.dataobj, dtype), chunks=tuple(chunks), lock=gz,
                             meta=np.empty((0,) * len(shape), dtype=dtype),
                             name=_token("nifti", p)).T
    zooms = tuple(float(z) for z in hdr.get_zooms())[: len(shape)]
    xyz_unit, t_unit = hdr.get_xyzt_units()
    affine = np.asarray(img.affine, dtype=np.float64)
    n = len(shape)
    meta: dict[str, Any] = {
        "nifti_header": hdr.copy(), "affine": affine,
        "nifti_version": 2 if isinstance(img, nib.Nifti2Image) else 1,
        "time_unit": {"sec": "s", "msec": "ms", "usec": "µs"}.get(t_unit)}
    natural_zooms = zooms[::-1]  # napari's natural order: (..., k, j, i)
    direction = None
    # qform_code = sform_code = 0 means "no orientation" (the spec's method 1: pixdim only);
    # nibabel's fallback affine for it flips x (ANALYZE's habit), which would be invented.
    if n >= 3 and max(int(hdr["qform_code"]), int(hdr["sform_code"])) > 0:
        m0 = nifti_to_world(affine)
        ro, m = reorient(m0, data.shape[-3:]) if orient else (Reorientation(), m0)
        data = ro.apply(data)
        lead = n - 3
        hint = [natural_zooms[lead + p] for p in ro.perm]
        sp3, org3, direction = split_geometry(m, consistent_spacing(hint, m))
        spacing = tuple(natural_zooms[:lead]) + sp3
        origin = (0.0,) * lead + org3
        meta.update(reorient=ro.as_meta(), patient_space=True)
    else:
        spacing = natural_zooms
        origin_l = [0.0] * n
        for a in range(min(3, n)):  # voxel axis a -> napari axis n-1-a
            origin_l[n - 1 - a] = float(affine[a, 3])
        origin = tuple(origin_l)
    return Volume(
        data=data, spacing=spacing, axis_labels=default_labels(n),
        # The NIfTI world is in mm by convention; many writers leave the unit 'unknown'.
        units=_NIFTI_UNITS.get(xyz_unit, "mm"), rgb=False, origin=origin, format="nifti",
        meta=meta, name=stem(p), direction=direction,
    )


def _check_complete(p: Path, gz: bool, needed: int) -> None:
    """Raise ``damaged`` when ``p`` holds fewer than ``needed`` bytes (header + voxels).

    For gzip the uncompressed size is in the stream's 4-byte trailer (modulo 2**32), so a
    complete single-stream file costs one small read. A mismatch means a cut file or several
    gzip members (bgzip, concatenation), which only decompressing it all can tell apart.
    """
    if not gz:
        size = p.stat().st_size
        if size < needed:
            raise damaged(p, f"its header needs {needed} bytes, the file has {size}")
        return
    with open(p, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() >= 4:
            fh.seek(-4, os.SEEK_END)
            if int.from_bytes(fh.read(4), "little") == needed % 2**32:
                return
    total = 0
    try:
        with gzip.open(p, "rb") as stream:
            while chunk := stream.read(BLOCK_BYTES):
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as err:  # cut stream, bad CRC, not gzip
        raise damaged(p, f"its gzip stream is cut or broken: {err}") from err
    if total < needed:
        raise damaged(p, f"its header needs {needed} bytes, it decompresses to {total}")


_NIFTI_STORABLE = {np.dtype(t) for t in (
    np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
    np.float32, np.float64, np.complex64, np.complex128)}
_UNIT_TO_NIFTI = {"mm": "mm", "µm": "micron", "m": "meter"}


def write_nifti(p: Path, data: Any, like: Volume | None, sp: tuple[float, ...],
                org: tuple[float, ...], units: str | None, spacing_given: bool,
                direction: Any = None) -> None:
    """Write ``data`` (napari order) as NIfTI: ``like``'s header when it came from a NIfTI file
    (the array turned back to the file's voxel order), else an affine from ``sp``, ``org`` and
    ``direction`` (the world of :mod:`.patient`, LPS, written as RAS)."""
    import nibabel as nib

    dtype = np.dtype(data.dtype)
    if dtype == np.bool_:
        dtype = np.dtype(np.uint8)
    elif dtype == np.float16:
        dtype = np.dtype(np.float32)  # NIfTI has no float16
    if dtype.newbyteorder("=") not in _NIFTI_STORABLE:
        raise ValueError(f"NIfTI cannot store {dtype} voxels; cast the data to int16, uint16, "
                         "int32 or float32 first")
    n = len(data.shape)
    header = like.meta.get("nifti_header") if like is not None and like.format == "nifti" else None
    turned = Reorientation.from_meta(like.meta.get("reorient")) if header is not None else None
    if turned is not None and not turned.identity:
        if n >= 3:  # back to the file's voxel order, so its header and affine hold as they are
            data = turned.undo(data)
            sp = turned.to_natural(sp)
        else:  # a plane of a turned volume: the header's affine does not describe it
            header = None
    shape = tuple(int(s) for s in data.shape)
    nifti_shape = shape[::-1]
    zooms = list(sp[::-1])
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
        affine, code = _nifti_affine(like, shape, zooms, sp, org, direction)
        hdr.set_sform(affine, code=code)
        hdr.set_qform(affine, code=code)
        hdr.set_zooms(zooms)
        hdr.set_xyzt_units(xyz=_UNIT_TO_NIFTI.get(units or "mm", "unknown"),
                           t="sec" if n >= 4 else "unknown")
    disk = hdr.get_data_dtype()  # the header's byte order
    tmp, fh = atomic_file(p)
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
                for index in iter_blocks(shape, disk.itemsize, 2):
                    out.write(np.ascontiguousarray(read_block(data, index), dtype=disk).tobytes())
            finally:
                if out is not fh:
                    out.close()
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _nifti_affine(like: Volume | None, shape: tuple[int, ...], zooms: list[float],
                  sp: tuple[float, ...], org: tuple[float, ...],
                  direction: Any) -> tuple[np.ndarray, int]:
    """(4x4 affine for NIfTI voxel (i, j, k), sform/qform code) when there is no NIfTI header.

    3-D and more: the data's place in the LPS world (``sp``, ``org``, ``direction``, napari
    order) written as RAS, so reading the file back gives the same array and geometry (ITK
    writes NIfTI the same way). Code 1 (scanner) for data from DICOM, else 2 (aligned).
    """
    n = len(shape)
    if n >= 3:
        affine = world_to_nifti(world_matrix(sp[-3:], org[-3:], direction))
        return affine, 1 if like is not None and like.format == "dicom" else 2
    m = min(n, 3)
    if (like is not None and like.format == "dicom" and "affine_lps" in like.meta
            and len(like.spacing) == m and m >= 2):
        # a single DICOM image: the z = 0 plane of its napari (z, y, x) -> LPS map
        a = np.asarray(like.meta["affine_lps"], dtype=np.float64)
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
