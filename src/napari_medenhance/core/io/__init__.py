"""Reading and writing volumes with their physical geometry: TIFF, NIfTI, DICOM series, zarr.

Everything here is Qt- and napari-free so the CLI, batch jobs and dask workers share it; the
napari reader/writer (``napari_medenhance._io_napari``) is a thin layer over it.

Conventions
-----------
* **Axis order.** :class:`Volume.data` is in napari order ``(..., Z, Y, X[, C])``: the last two
  axes are the rows (Y) and columns (X) of a plane, a trailing colour axis only when ``rgb``.
  ``spacing`` and ``origin`` have one entry per axis *excluding* the colour axis, in the same
  order, so they are napari's ``scale`` and ``translate``.
* **Patient space** (NIfTI with an orientation, DICOM series with positions; :mod:`.patient`).
  The world is patient LPS in mm, in napari order: ``z`` superior, ``y`` posterior, ``x`` the
  patient's left (NIfTI's RAS with x and y negated). ``spacing`` is the voxel size along each
  axis, ``origin`` the world position of data voxel 0, and ``Volume.direction`` the rest of the
  voxel-to-patient transform (flips, axis permutation, rotation; None when there is none):
  ``world = origin + direction @ diag(spacing) @ index``. With ``orient=True`` (napari's reader)
  the array is turned (transposed and flipped: views, no copy) until data axis ``a`` is the
  voxel axis nearest to world axis ``a``, pointing the same way, so axial slices are on axis 0
  and napari's default camera shows them radiologically (anterior at the top, the patient's
  right on the screen's left); ``meta["reorient"]`` records the turn and ``direction`` keeps
  only an oblique rest. The default (``orient=False``) keeps the file's own planes, which the
  CLI and batch jobs process plane by plane (the acquisition planes, at their resolution).
* **NIfTI.** The natural napari order is the voxel axes reversed (``(i, j, k)`` → ``(k, j, i)``,
  ``(i, j, k, t)`` → ``(t, k, j, i)``), in patient space when the header has an orientation
  (qform or sform code > 0; 3-D and more). Writing with ``like`` turns a turned array back and
  writes the header and affine as they were, bit for bit (C-order bytes of the natural array
  *are* the Fortran-order NIfTI bytes). Files without an orientation (both codes 0) and 2-D
  files keep the header zooms and the affine's translation (reversed) as spacing and origin.
* **DICOM.** The natural order is (slice sorted by position along the slice normal ``row ×
  column`` direction cosines, ascending; row; column), ``spacing = (slice step,
  PixelSpacing[0], PixelSpacing[1])`` in mm; an axial series already faces the world (nothing
  turns). ``meta["affine_lps"]`` maps napari ``(z, y, x, 1)`` indices of the returned array to
  patient LPS mm. A single image is 2-D ``(Y, X)`` with ``origin`` its first pixel's position
  in the slice frame ``(IPP·column_cosines, IPP·row_cosines)``.
* **Writing NIfTI without a NIfTI ``like``** (from DICOM, TIFF, zarr...; 3-D and more): the
  affine places the data where its spacing, origin and direction put it in the LPS world,
  written as RAS (as ITK does), so reading it back gives the same array and geometry.
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
:mod:`.dicom`, :mod:`.zarr_store`), :mod:`.streaming` (blocks of planes, atomic files),
:mod:`.patient` (the patient world, turning voxel grids to face it).
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
