"""Patient space: the world napari shows radiology volumes in, and voxel grids turned to face it.

World axes
----------
The world axes ``(z, y, x)`` are patient coordinates in millimetres: DICOM's (and ITK's) LPS,
in napari's axis order (reversed):

* ``z`` grows towards the head (superior, S); the other way is inferior (I);
* ``y`` grows towards the back (posterior, P); the other way is anterior (A);
* ``x`` grows towards the patient's left (L); the other way is the patient's right (R).

NIfTI's RAS world is the same space with x and y negated (``x_LPS = -x_RAS``, ``y_LPS =
-y_RAS``, ``z_LPS = z_RAS``). With napari's default 2-D camera (data rows go down the screen,
columns to the right) an axial slice, with ``z`` on the slider, shows anterior at the top and
the patient's right on the screen's left: the radiological convention, with no camera change
(DICOM chose LPS for exactly this reason). The neurological convention, and coronal and sagittal
views, are camera settings (:mod:`napari_medenhance.core.orientation`); world coordinates never
change with the display.

Reorienting a grid
------------------
napari slices a layer along its *data* axes; a layer whose transform permutes axes (a
FreeSurfer LIA volume, a sagittal DICOM series) would show sagittal slices on the "axial"
slider. So for napari (``read_volume(..., orient=True)``) the reader turns the voxel array (a
transpose and flips: views, no copy) until data axis ``a`` is the voxel axis nearest to world
axis ``a`` and points the same way
(:func:`nibabel.orientations.io_orientation`), and keeps what remains of the affine as the
volume's ``spacing``, ``origin`` (the world position of data voxel 0) and ``direction``: the
residual rotation of an oblique acquisition (under 45°), or a shear (a tilted CT gantry), with
``world = origin + direction @ diag(spacing) @ index`` (ITK's convention). An axis-aligned file
has no ``direction`` (None), so napari's ``scale`` and ``translate`` alone place it. The
:class:`Reorientation` is kept so a writer can turn the array back and reproduce the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Reorientation",
    "consistent_spacing",
    "lps_to_world",
    "napari_transform_kwargs",
    "nifti_to_world",
    "reorient",
    "split_geometry",
    "world_matrix",
    "world_to_lps",
    "world_to_nifti",
]

# Reverses (x, y, z) <-> (z, y, x) in homogeneous coordinates; its own inverse.
_REV = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
# RAS <-> LPS; its own inverse.
_FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])
# A direction closer than this to the identity is the identity (NIfTI stores float32 affines).
_SNAP = 1e-6


@dataclass(frozen=True)
class Reorientation:
    """How a volume's last three axes were turned to face the world.

    Reoriented axis ``a`` is axis ``perm[a]`` of the file's natural array (NIfTI: voxel axes
    reversed; DICOM: slice, row, column), reversed when ``flip[a]``.
    """

    perm: tuple[int, int, int] = (0, 1, 2)
    flip: tuple[bool, bool, bool] = (False, False, False)

    @property
    def identity(self) -> bool:
        """True when the natural array already faces the world."""
        return self.perm == (0, 1, 2) and not any(self.flip)

    def as_meta(self) -> dict[str, list]:
        """Plain lists, for layer metadata and JSON."""
        return {"perm": [int(p) for p in self.perm], "flip": [bool(f) for f in self.flip]}

    @classmethod
    def from_meta(cls, meta: Any) -> Reorientation | None:
        """The inverse of :meth:`as_meta`; None for a missing or malformed entry."""
        try:
            perm = tuple(int(p) for p in meta["perm"])
            flip = tuple(bool(f) for f in meta["flip"])
        except (TypeError, KeyError, ValueError):
            return None
        if sorted(perm) != [0, 1, 2] or len(flip) != 3:
            return None
        return cls(perm, flip)  # type: ignore[arg-type]

    def apply(self, data: Any) -> Any:
        """The natural array (numpy, memmap or dask; spatial axes last) turned to the world."""
        if self.identity:
            return data
        lead = data.ndim - 3
        out = data.transpose(*range(lead), *(lead + p for p in self.perm))
        index = (slice(None),) * lead + tuple(slice(None, None, -1) if f else slice(None)
                                              for f in self.flip)
        return out[index]

    def undo(self, data: Any) -> Any:
        """The inverse of :meth:`apply`: a reoriented array back in the file's natural order."""
        if self.identity:
            return data
        lead = data.ndim - 3
        index = (slice(None),) * lead + tuple(slice(None, None, -1) if f else slice(None)
                                              for f in self.flip)
        inverse = np.argsort(self.perm)
        return data[index].transpose(*range(lead), *(lead + int(p) for p in inverse))

    def to_natural(self, values: Sequence[float]) -> tuple[float, ...]:
        """Per-axis values (spacing...) of the last three axes, reoriented -> natural order."""
        vals = list(values)
        lead, three = vals[:-3], vals[-3:]
        natural = [0.0] * 3
        for a, p in enumerate(self.perm):
            natural[p] = three[a]
        return tuple(lead + natural)

    def index_matrix(self, natural_shape: Sequence[int]) -> np.ndarray:
        """4×4 homogeneous map: reoriented index (last three axes) -> natural index."""
        t = np.zeros((4, 4))
        t[3, 3] = 1.0
        for a, (p, f) in enumerate(zip(self.perm, self.flip)):
            t[p, a] = -1.0 if f else 1.0
            if f:
                t[p, 3] = natural_shape[p] - 1
        return t


def nifti_to_world(affine: np.ndarray) -> np.ndarray:
    """NIfTI voxel->RAS ``affine`` as a map from napari's natural index ``(k, j, i)`` (the voxel
    axes reversed) to the world ``(z, y, x)`` in LPS mm (4×4)."""
    return _REV @ _FLIP_XY @ np.asarray(affine, dtype=np.float64) @ _REV


def world_to_nifti(matrix: np.ndarray) -> np.ndarray:
    """The inverse of :func:`nifti_to_world`: a napari index ``(z, y, x)`` -> world map as the
    NIfTI voxel ``(i, j, k)`` -> RAS affine (4×4)."""
    return _FLIP_XY @ _REV @ np.asarray(matrix, dtype=np.float64) @ _REV


def lps_to_world(affine_lps: np.ndarray) -> np.ndarray:
    """A map from napari index ``(z, y, x)`` to patient LPS ``(x, y, z)`` (DICOM) as a map to the
    world ``(z, y, x)`` (4×4)."""
    return _REV @ np.asarray(affine_lps, dtype=np.float64)


def world_to_lps(matrix: np.ndarray) -> np.ndarray:
    """The inverse of :func:`lps_to_world`."""
    return _REV @ np.asarray(matrix, dtype=np.float64)


def reorient(matrix: np.ndarray, natural_shape: Sequence[int]) -> tuple[Reorientation, np.ndarray]:
    """The :class:`Reorientation` that turns a grid to face the world, and its new matrix.

    Args:
        matrix: 4×4 map from the natural index (last three axes) to the world ``(z, y, x)``.
        natural_shape: sizes of those three axes.

    Returns:
        ``(reorientation, new_matrix)`` with ``new_matrix`` mapping the reoriented index to the
        world: each of its linear columns is nearest to its own world axis, positively.
        A degenerate matrix (a zero voxel size) is left as it is.
    """
    from nibabel.orientations import io_orientation

    m = np.asarray(matrix, dtype=np.float64)
    try:
        ornt = io_orientation(m)  # per natural axis: (world axis, ±1)
    except Exception:  # noqa: BLE001 - nibabel raises on singular matrices
        return Reorientation(), m
    if np.isnan(ornt).any():
        return Reorientation(), m
    perm = [0, 0, 0]
    flip = [False, False, False]
    for natural, (world, sign) in enumerate(ornt):
        perm[int(world)] = natural
        flip[int(world)] = bool(sign < 0)
    ro = Reorientation(tuple(perm), tuple(flip))  # type: ignore[arg-type]
    return ro, m @ ro.index_matrix(natural_shape)


def split_geometry(matrix: np.ndarray, spacing: Sequence[float] | None = None
                   ) -> tuple[tuple[float, float, float], tuple[float, float, float],
                              tuple[tuple[float, ...], ...] | None]:
    """``(spacing, origin, direction)`` of an index -> world 4×4 matrix.

    ``spacing`` is the given one (a header's exact zooms, a DICOM series' slice step, which a
    gantry tilt makes shorter than the step between slice corners), else the lengths of the
    matrix's columns; ``origin`` is the world position of voxel 0; ``direction`` is ``linear @
    diag(1 / spacing)``, or None when that is the identity within 1e-6 (an axis-aligned grid).
    """
    m = np.asarray(matrix, dtype=np.float64)
    lin = m[:3, :3]
    norms = np.linalg.norm(lin, axis=0)
    given = [float(s) for s in spacing] if spacing is not None else [0.0, 0.0, 0.0]
    sp = [g if g > 0 else (float(n) if n > 0 else 1.0) for g, n in zip(given, norms)]
    direction = lin / np.asarray(sp)
    origin = tuple(float(v) for v in m[:3, 3])
    if np.abs(direction - np.eye(3)).max() <= _SNAP:
        return tuple(sp), origin, None  # type: ignore[return-value]
    return (tuple(sp), origin,  # type: ignore[return-value]
            tuple(tuple(float(v) for v in row) for row in direction))


def consistent_spacing(zooms: Sequence[float], matrix: np.ndarray) -> tuple[float, ...]:
    """A header's ``zooms`` where they agree with the matrix's column lengths (rel. 1e-5), so
    spacing keeps the header's exact values; the column lengths where they do not."""
    norms = np.linalg.norm(np.asarray(matrix, dtype=np.float64)[:3, :3], axis=0)
    return tuple(float(z) if z > 0 and abs(float(z) - n) <= 1e-5 * float(z) else float(n)
                 for z, n in zip(zooms, norms))


def world_matrix(spacing: Sequence[float], origin: Sequence[float],
                 direction: Any = None) -> np.ndarray:
    """4×4 index -> world map of the last three axes: ``origin + direction @ diag(spacing)``."""
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = d @ np.diag([float(s) for s in spacing[-3:]])
    m[:3, 3] = [float(o) for o in origin[-3:]]
    return m


def napari_transform_kwargs(ndim: int, origin: Sequence[float], direction: Any
                            ) -> dict[str, Any]:
    """napari layer keywords that add ``direction`` to a layer's ``scale`` and ``translate``.

    A rotation (orthonormal, det +1) becomes ``rotate``, so ``scale`` and ``translate`` stay the
    spacing and origin; anything else (a shear, a reflection) becomes ``affine`` applied around
    the origin (napari applies ``affine`` after ``translate``). Empty for no direction.
    """
    if direction is None:
        return {}
    d = np.asarray(direction, dtype=np.float64)
    full = np.eye(ndim)
    full[-3:, -3:] = d
    if np.allclose(d @ d.T, np.eye(3), atol=1e-9) and np.linalg.det(d) > 0:
        return {"rotate": full}
    org = np.zeros(ndim)
    org[-3:] = [float(o) for o in origin[-3:]]
    aff = np.eye(ndim + 1)
    aff[:ndim, :ndim] = full
    aff[:ndim, ndim] = org - full @ org
    return {"affine": aff}
