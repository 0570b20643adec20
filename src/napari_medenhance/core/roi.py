"""Regions of interest for lesion-focused super-resolution: Shapes / Labels → pixel boxes of an
image, planes of a stack, and where an ROI's super-resolved output lies in world space.

Qt- and napari-free: the layers' transforms come in as homogeneous ``(D+1)×(D+1)`` data→world
matrices (napari: ``affine ∘ (translate + rotate·shear·scale·d)``), so this module works on the
numbers alone and the tests can check it without a viewer.

Conventions
-----------
* **Pixels.** napari puts the centre of pixel ``i`` at data coordinate ``i``; the pixel covers
  ``[i − 0.5, i + 0.5]``. An :class:`ROI` is the half-open pixel range ``[y0, y1) × [x0, x1)`` of
  the image's last two data axes (Y, X; the channel axis of an RGB image is not a data axis).
* **From a drawn region to pixels.** Every vertex of a shape (rectangle, polygon, ellipse: its
  bounding corners) goes shapes-data → world → image-data with the two layers' matrices, and the
  ROI is every pixel its bounding box in image-data coordinates overlaps: ``y0 = floor(ymin +
  0.5)``, ``y1 = ceil(ymax + 0.5)`` (with a 1e-3 px tolerance: napari keeps vertices in float32). A rectangle
  drawn exactly on pixel edges therefore gives exactly those pixels, also under a rotation.
* **Dimensionality.** Layers align on their trailing axes, as napari's world does. A 2-D ROI
  layer over a 3-D image can be mapped only when the image's transform keeps Y and X apart from
  its leading axes (no 3-D rotation / shear / affine mixing Z into Y, X); otherwise a
  :class:`ValueError` says so. A ROI layer with more axes than the image uses its trailing
  ones.
* **Placement of the output** (:func:`roi_output_affine`). The SR output of an ROI at factor f
  has ``f·(y1 − y0) × f·(x1 − x0)`` pixels; output pixel ``(i, j)`` has its centre at source
  data coordinate ``(y0 − 0.5 + (i + 0.5)/f, x0 − 0.5 + (j + 0.5)/f)``, so the f² output pixels
  of source pixel ``(y, x)`` tile exactly its area ``[y − 0.5, y + 0.5]``. As a matrix: the
  source layer's data→world matrix times a per-ROI scale ``1/f`` and translate
  ``y0 − 0.5 + 0.5/f`` (and for X), which is exact for any source scale, translate, rotate,
  shear and affine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "PLANE_MODES",
    "ROI",
    "check_roi",
    "roi_from_points",
    "roi_output_affine",
    "rois_from_labels",
    "rois_from_shapes",
    "select_planes",
]

#: How an ROI applies to the planes of a stack.
PLANE_MODES = ("current", "range", "all")
#: Shape types whose bounding box is an ROI (napari stores an ellipse as its 4 corners).
AREA_SHAPES = ("rectangle", "polygon", "ellipse")
# Pixel-unit tolerance of the pixel rounding: napari stores shape vertices as float32 (~1e-7
# relative, i.e. ~1e-5 px at world coordinates of a few hundred), so an edge within 1e-3 px of a
# pixel boundary is taken as lying on it.
_TOL = 1e-3


@dataclass(frozen=True)
class ROI:
    """Half-open pixel box ``[y0, y1) × [x0, x1)`` in an image's (Y, X) data coordinates."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in source pixels."""
        return self.y1 - self.y0, self.x1 - self.x0

    def as_tuple(self) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)``, the form ``super_resolve(roi=...)`` takes."""
        return self.y0, self.y1, self.x0, self.x1

    def slices(self) -> tuple[slice, slice]:
        """``(slice(y0, y1), slice(x0, x1))``."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def check_roi(roi: Any, plane_shape: Sequence[int], what: str = "ROI") -> ROI:
    """An :class:`ROI` or ``(y0, y1, x0, x1)`` (data pixels, half-open), clipped to the plane.

    Args:
        roi: the box; integers (floats that are whole numbers are accepted).
        plane_shape: ``(Y, X)`` of the image's planes.
        what: how messages name it (e.g. ``"ROI 2"``).

    Raises:
        ValueError: not four integers; empty (``y1 <= y0`` or ``x1 <= x0``); entirely outside
            the image.
    """
    if isinstance(roi, ROI):
        vals = list(roi.as_tuple())
    else:
        try:
            vals = [float(v) for v in roi]
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{what} must be (y0, y1, x0, x1) in data pixels; got {roi!r}"
            ) from e
        if len(vals) != 4 or not all(math.isfinite(v) and v == int(v) for v in vals):
            raise ValueError(
                f"{what} must be four integers (y0, y1, x0, x1), the half-open pixel range "
                f"[y0, y1) × [x0, x1); got {roi!r}"
            )
    y0, y1, x0, x1 = (int(v) for v in vals)
    h, w = int(plane_shape[0]), int(plane_shape[1])
    if y1 <= y0 or x1 <= x0:
        raise ValueError(
            f"{what} (y0, y1, x0, x1) = {(y0, y1, x0, x1)} is empty: it needs y1 > y0 and x1 > x0"
        )
    cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    if cy1 <= cy0 or cx1 <= cx0:
        raise ValueError(
            f"{what} (y0, y1, x0, x1) = {(y0, y1, x0, x1)} lies outside the image, whose planes "
            f"span [0, {h}) × [0, {w}); draw it over the image"
        )
    return ROI(cy0, cy1, cx0, cx1)


def _as_matrix(m: Any, ndim: int | None, what: str) -> np.ndarray:
    a = np.asarray(m, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 3:
        raise ValueError(f"{what} must be a square homogeneous (D+1)×(D+1) matrix, D >= 2; got {a.shape}")
    if ndim is not None and a.shape[0] != ndim + 1:
        raise ValueError(
            f"{what} is {a.shape[0]}×{a.shape[0]}; a {ndim}-D layer needs {ndim + 1}×{ndim + 1}"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} has non-finite entries")
    return a


def _to_image_yx(points: np.ndarray, roi_to_world: np.ndarray, image_to_world: np.ndarray) -> np.ndarray:
    """``points`` (N×Dr, ROI-layer data) → N×2 image (Y, X) data coordinates."""
    dr, di = roi_to_world.shape[0] - 1, image_to_world.shape[0] - 1
    homog = np.hstack([points, np.ones((len(points), 1))])
    world = (roi_to_world @ homog.T).T[:, :dr]
    try:
        inv = np.linalg.inv(image_to_world)
    except np.linalg.LinAlgError as e:
        raise ValueError("the image layer's transform is not invertible (a zero scale?)") from e
    if dr >= di:
        w = world[:, dr - di :]
    else:
        # The ROI layer lacks the image's leading world axes: only mappable when Y and X of the
        # image do not depend on them.
        n_lead = di - dr
        mix = inv[di - 2 : di, :n_lead]
        if np.abs(mix).max() > 1e-9 * max(1.0, np.abs(inv[di - 2 : di, n_lead:di]).max()):
            raise ValueError(
                f"the ROI layer is {dr}-D and the image {di}-D, and the image's transform mixes "
                "its leading axes into Y and X (a 3-D rotation, shear or affine), so a "
                f"{dr}-D region has no single place in the image; draw the ROI in a {di}-D "
                "layer, or give both layers transforms that keep Y and X separate"
            )
        w = np.hstack([np.zeros((len(points), n_lead)), world])
    data = (inv @ np.hstack([w, np.ones((len(w), 1))]).T).T
    return data[:, di - 2 : di]


def roi_from_points(yx: np.ndarray) -> tuple[int, int, int, int]:
    """Unclipped pixel box ``(y0, y1, x0, x1)`` of every pixel the bounding box of the image
    data points ``yx`` (N×2) overlaps (module docstring)."""
    ymin, xmin = yx.min(axis=0)
    ymax, xmax = yx.max(axis=0)
    return (
        math.floor(ymin + 0.5 + _TOL), math.ceil(ymax + 0.5 - _TOL),
        math.floor(xmin + 0.5 + _TOL), math.ceil(xmax + 0.5 - _TOL),
    )


def rois_from_shapes(
    shapes: Sequence[np.ndarray],
    plane_shape: Sequence[int],
    *,
    shapes_to_world: Any,
    image_to_world: Any,
    shape_types: Sequence[str] | None = None,
) -> list[ROI]:
    """One :class:`ROI` per shape: its bounding box in the image's (Y, X) pixels, clipped.

    Args:
        shapes: the Shapes layer's ``data``, one ``N×Dr`` vertex array per shape, in the Shapes
            layer's own data coordinates.
        plane_shape: ``(Y, X)`` of the image's planes.
        shapes_to_world, image_to_world: homogeneous data→world matrices of the Shapes and the
            image layer.
        shape_types: the layer's ``shape_type`` list; lines and paths (no area) are refused.

    Raises:
        ValueError: no shapes; a line or path; a layer whose dimensionality cannot be mapped;
            a shape outside the image (the message names it, counting from 1).
    """
    if len(shapes) == 0:
        raise ValueError("the ROI layer has no shapes; draw a rectangle or polygon over the image")
    s2w = _as_matrix(shapes_to_world, None, "shapes_to_world")
    i2w = _as_matrix(image_to_world, None, "image_to_world")
    out = []
    for k, verts in enumerate(shapes, start=1):
        kind = shape_types[k - 1] if shape_types is not None else "polygon"
        if kind not in AREA_SHAPES:
            raise ValueError(
                f"shape {k} is a {kind}, which encloses no area; use rectangles, polygons or "
                "ellipses as ROIs"
            )
        v = np.asarray(verts, dtype=float)
        if v.ndim != 2 or v.shape[1] != s2w.shape[0] - 1 or len(v) == 0:
            raise ValueError(
                f"shape {k} has vertices shaped {v.shape}; expected N×{s2w.shape[0] - 1}"
            )
        box = roi_from_points(_to_image_yx(v, s2w, i2w))
        out.append(check_roi(box, plane_shape, f"shape {k}"))
    return out


def rois_from_labels(
    labels: Any,
    plane_shape: Sequence[int],
    *,
    labels_to_world: Any,
    image_to_world: Any,
    margin: int = 0,
    index: Sequence[int] | None = None,
) -> list[tuple[int, ROI]]:
    """``(label, ROI)`` per label present: its bounding box plus ``margin`` pixels, clipped.

    Args:
        labels: the Labels layer's data (numpy or dask), ``ndim`` = the layer's.
        plane_shape: ``(Y, X)`` of the image's planes.
        labels_to_world, image_to_world: homogeneous data→world matrices of the two layers.
        margin: image pixels added on every side (then clipped to the image).
        index: only the labels of this plane of the Labels layer's leading axes (e.g. the
            plane on screen); None: the bounding box over all planes.

    Raises:
        ValueError: no label (all zero), negative margin, unmappable dimensionality, a label
            box outside the image.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0 pixels; got {margin}")
    from scipy.ndimage import find_objects

    l2w = _as_matrix(labels_to_world, None, "labels_to_world")
    i2w = _as_matrix(image_to_world, None, "image_to_world")
    nd = l2w.shape[0] - 1
    arr = labels
    lead: tuple[int, ...] = ()
    if index is not None:
        lead = tuple(int(i) for i in index)
        arr = arr[lead]
    arr = np.asarray(arr)
    if arr.ndim + len(lead) != nd or arr.ndim < 2:
        raise ValueError(
            f"the labels are shaped {np.shape(labels)}; with index {index} that does not fit "
            f"a {nd}-D Labels layer (need at least Y and X)"
        )
    if arr.dtype.kind not in "iu" and arr.dtype.kind != "b":
        raise ValueError(f"labels must be integers; got {arr.dtype}")
    found = find_objects(arr.astype(np.int64, copy=False))
    out = []
    for value, sl in enumerate(found, start=1):
        if sl is None:
            continue
        # The box's pixel edges in the labels' data coordinates; every corner is mapped, which
        # is exact for any affine (the image of a box is the hull of its corners' images).
        lo = [*lead, *(s.start - 0.5 for s in sl)]
        hi = [*lead, *(s.stop - 0.5 for s in sl)]
        corners = np.array(np.meshgrid(*[[a, b] for a, b in zip(lo, hi)], indexing="ij")).reshape(nd, -1).T
        y0, y1, x0, x1 = roi_from_points(_to_image_yx(corners, l2w, i2w))
        box = (y0 - margin, y1 + margin, x0 - margin, x1 + margin)
        out.append((value, check_roi(box, plane_shape, f"label {value}")))
    if not out:
        where = f" on plane {lead}" if lead else ""
        raise ValueError(f"the Labels layer has no labelled pixels{where}; paint the lesion first")
    return out


def select_planes(
    lead_shape: Sequence[int],
    mode: str,
    current: Sequence[int] = (),
    start: int | None = None,
    stop: int | None = None,
) -> tuple[tuple[slice, ...], tuple[int, ...]]:
    """Which planes of a stack an ROI applies to.

    Args:
        lead_shape: sizes of the image's leading (non-Y/X) axes; ``()`` for a 2-D image.
        mode: ``"current"`` (the plane ``current``), ``"range"`` (planes ``start .. stop - 1``
            of the last leading axis, Z; other leading axes at ``current``) or ``"all"``.
        current: index of the plane on screen along the leading axes.
        start, stop: the range (half-open) for ``"range"``.

    Returns:
        ``(index, offset)``: a tuple of slices over the leading axes that keeps them as axes
        (``array[index]``), and the data coordinate of its first plane along each leading axis
        (for :func:`roi_output_affine`). A 2-D image gives ``((), ())`` in every mode.

    Raises:
        ValueError: unknown mode, ``current`` of the wrong length or outside, a bad range.
    """
    if mode not in PLANE_MODES:
        raise ValueError(f"unknown plane mode {mode!r}; choose one of {', '.join(PLANE_MODES)}")
    lead_shape = tuple(int(n) for n in lead_shape)
    if not lead_shape:
        return (), ()
    if mode == "all":
        return tuple(slice(None) for _ in lead_shape), tuple(0 for _ in lead_shape)
    current = tuple(int(c) for c in current)
    if len(current) != len(lead_shape) or any(not 0 <= c < n for c, n in zip(current, lead_shape)):
        raise ValueError(f"current plane {current} does not index leading axes of sizes {lead_shape}")
    index = [slice(c, c + 1) for c in current]
    offset = list(current)
    if mode == "range":
        n = lead_shape[-1]
        if start is None or stop is None or not 0 <= start < stop <= n:
            raise ValueError(f"plane range must satisfy 0 <= start < stop <= {n}; got {start}..{stop}")
        index[-1] = slice(int(start), int(stop))
        offset[-1] = int(start)
    return tuple(index), tuple(offset)


def roi_output_affine(
    image_to_world: Any,
    roi: ROI,
    factor: int,
    offset: Sequence[float] = (),
) -> np.ndarray:
    """Data→world matrix of an ROI's SR output (module docstring, "Placement").

    Args:
        image_to_world: the source image layer's homogeneous data→world matrix, D+1 square
            (D excludes an RGB channel axis).
        roi: the ROI in the source's (Y, X) data pixels.
        factor: the SR factor f.
        offset: data coordinate of the output's first plane along each leading axis (from
            :func:`select_planes`); default 0.

    Returns:
        ``image_to_world @ L`` with L = scale 1/f on Y and X, translate ``(*offset, y0 − 0.5 +
        0.5/f, x0 − 0.5 + 0.5/f)``: output pixel (i, j) centre ↔ source data
        ``(y0 − 0.5 + (i + 0.5)/f, x0 − 0.5 + (j + 0.5)/f)``.
    """
    m = _as_matrix(image_to_world, None, "image_to_world")
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive integer; got {factor}")
    d = m.shape[0] - 1
    offset = tuple(float(o) for o in offset)
    if len(offset) not in (0, d - 2):
        raise ValueError(f"offset needs {d - 2} leading coordinates; got {offset}")
    local = np.eye(d + 1)
    f = float(factor)
    local[d - 2, d - 2] = local[d - 1, d - 1] = 1.0 / f
    local[d - 2, d] = roi.y0 - 0.5 + 0.5 / f
    local[d - 1, d] = roi.x0 - 0.5 + 0.5 / f
    for k, o in enumerate(offset):
        local[k, d] = o
    return m @ local
