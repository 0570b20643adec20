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
* **Truncated files** (an interrupted copy, download or save) raise a ``ValueError`` that names
  the file and says it looks truncated or corrupt when the volume is opened: not later, when a
  lazy read reaches the missing bytes, and not as a silently shorter stack. (Bad bytes inside
  compressed pixel data only show when those pixels are decoded.)

Modules: :mod:`.volume` (the :class:`Volume`, suffixes, units, rescaling), :mod:`.dispatch`
(``read_volume``/``write_volume`` pick the format), one per format (:mod:`.tiff`, :mod:`.nifti`,
:mod:`.dicom`, :mod:`.zarr_store`), :mod:`.streaming` (blocks of planes, atomic files).
"""

from .dicom import is_dicom_folder, read_dicom_series
from .dispatch import read_volume, write_volume
from .volume import Volume, supported_suffixes, writable_suffixes

__all__ = [
    "Volume",
    "is_dicom_folder",
    "read_dicom_series",
    "read_volume",
    "supported_suffixes",
    "writable_suffixes",
    "write_volume",
]
