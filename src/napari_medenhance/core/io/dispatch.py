"""``read_volume`` and ``write_volume``: pick the format module from the path."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .dicom import dicom_files_in, has_dicom_marker, read_dicom_series
from .nifti import read_nifti, write_nifti
from .tiff import read_tiff, write_tiff
from .volume import (DICOM_SUFFIXES, WRITE_SUFFIXES, Volume, default_labels, fit, formats_hint, stem,
                     suffix_of)
from .zarr_store import read_zarr, write_zarr


def read_volume(path: str | os.PathLike, *, lazy: bool = True, orient: bool = False) -> Volume:
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
    orient
        Radiology volumes (NIfTI with an orientation, positioned DICOM series): True turns the
        array (views, no copy) to face the patient world, axial slices on axis 0, as napari
        shows them; False (default) keeps the file's own planes (what plane-by-plane
        processing wants: the acquisition planes). The geometry is the patient position
        either way (``spacing``, ``origin``, ``direction``; module docstring).

    Returns
    -------
    Volume
        ``data`` in napari order ``(..., Z, Y, X[, C])``; see the module docstring for how each
        format's axes map to it (radiology volumes: turned to face the patient world).

    Raises
    ------
    ValueError
        Missing path, unknown suffix, a folder without DICOM files or with several series,
        slices of different sizes/orientations or at the same position, files that are not
        DICOM or hold no pixels, pixels that need a decoder that is not installed, files that
        look truncated or corrupt (the message names the file).
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"no such file or folder: {p}; {formats_hint()}")
    suffix = suffix_of(p)
    if suffix == ".zarr" or (p.is_dir() and any((p / f).exists() for f in ("zarr.json", ".zarray", ".zgroup"))):
        return read_zarr(p, lazy)
    if p.is_dir():
        files = dicom_files_in(p)
        if not files:
            raise ValueError(f"folder {p} holds no DICOM files (.dcm or files with the 'DICM' "
                             f"marker); {formats_hint()}")
        return read_dicom_series(files, lazy=lazy, name=p.name, orient=orient)
    if suffix in (".tif", ".tiff"):
        return read_tiff(p, lazy)
    if suffix in (".nii", ".nii.gz"):
        return read_nifti(p, lazy, orient)
    if suffix in DICOM_SUFFIXES or has_dicom_marker(p):
        return read_dicom_series([p], lazy=lazy, name=stem(p), orient=orient)
    raise ValueError(f"cannot read {p.name!r}: unknown file type {suffix or '(no suffix)'!r}; "
                     f"{formats_hint()}")


def write_volume(path: str | os.PathLike, data: Any, like: Volume | None = None, *,
                 spacing: Sequence[float] | None = None, origin: Sequence[float] | None = None,
                 units: str | None = None, axis_labels: Sequence[str] | None = None,
                 rgb: bool | None = None, direction: Any = None) -> Path:
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
          :func:`read_volume` (the array is turned back to the file's voxel order). A
          ``spacing`` that differs from ``like.spacing`` scales the affine's voxel columns (the
          file's voxel 0 stays put).
        * DICOM and everything else → NIfTI (3-D and more): the affine places the data where
          its spacing, origin and direction put it in the LPS world, written as RAS (DICOM
          data gets sform/qform code 1, scanner), so reading it back gives the same geometry.
        * TIFF → TIFF: its resolution/ImageJ keywords are reused when the spacing is unchanged.
    spacing, origin, units, axis_labels, rgb, direction
        Override ``like``'s values (napari order; defaults 1.0, 0.0, None, napari defaults,
        no direction). ``direction`` (3×3, the last three axes; see :class:`Volume`) is used
        by NIfTI files written without a NIfTI ``like``; TIFF and zarr cannot hold it.

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
    suffix = suffix_of(p)
    if suffix not in WRITE_SUFFIXES:
        extra = " (writing DICOM is not supported)" if suffix in DICOM_SUFFIXES else ""
        raise ValueError(f"cannot write {p.name!r}{extra}: use one of {', '.join(WRITE_SUFFIXES)}")
    ndim = len(data.shape)
    if rgb is None:  # like's colour flag, when data still has its colour axis
        rgb = bool(like is not None and like.rgb and ndim == len(like.spacing) + 1
                   and data.shape[-1] in (3, 4))
    if rgb and (ndim < 3 or data.shape[-1] not in (3, 4)):
        raise ValueError(f"rgb=True needs a last axis of 3 or 4 colours, got shape {tuple(data.shape)}")
    n = ndim - int(rgb)
    sp = fit(spacing if spacing is not None else (like.spacing if like else None), n, 1.0)
    org = fit(origin if origin is not None else (like.origin if like else None), n, 0.0)
    if units is None and like is not None:
        units = like.units
    labels = tuple(axis_labels) if axis_labels is not None and len(axis_labels) == n else None
    if labels is None and like is not None and len(like.axis_labels) >= n:
        labels = tuple(like.axis_labels[len(like.axis_labels) - n:])
    labels = labels or default_labels(n)
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".nii", ".nii.gz"):
        if rgb:
            raise ValueError("NIfTI output of RGB data is not supported; write it as .tif")
        if direction is None and like is not None and len(like.spacing) == n:
            direction = like.direction
        write_nifti(p, data, like, sp, org, units, spacing is not None,
                    direction if n >= 3 else None)
    elif suffix in (".tif", ".tiff"):
        write_tiff(p, data, like, sp, org, units, labels, bool(rgb))
    else:
        write_zarr(p, data, sp, org, units, labels, bool(rgb))
    return p
