"""Small napari-aware helpers shared by the dock widgets: planes, transforms, worker progress."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari


def plane_axes(layer: napari.layers.Image) -> int:
    """Number of leading (non-plane) axes of an image layer: ndim minus Y, X (channels excluded)."""
    return max(layer.ndim - 2, 0)


def current_plane_index(viewer: napari.Viewer, layer: napari.layers.Image) -> tuple[int, ...]:
    """Index of the plane of ``layer`` the viewer is on, clipped to the layer's data.

    Uses the layer's own world->data mapping, so layers with different scale or translate
    (or fewer dimensions than the viewer) resolve to their own plane.
    """
    n = plane_axes(layer)
    if n == 0:
        return ()
    point = viewer.dims.point[-layer.ndim:]
    data_pt = np.asarray(layer.world_to_data(point))[:n]
    shape = layer.data.shape[:n]
    return tuple(int(np.clip(round(float(c)), 0, s - 1)) for c, s in zip(data_pt, shape))


def transform_kwargs(layer: napari.layers.Layer, *, plane_stride: float = 1.0) -> dict[str, Any]:
    """Layer kwargs that place a derived array over ``layer`` in world coordinates.

    ``plane_stride`` is how many source pixels one derived pixel steps in Y and X, with derived
    pixel ``i`` centred on source pixel ``plane_stride * i`` (true for OpenCV-style pyramid
    levels, which keep the even rows and columns). Scale is applied before shear, rotate,
    translate and affine in napari, so multiplying the last two scales is exact for any of them.
    """
    scale = np.asarray(layer.scale, dtype=float).copy()
    scale[-2:] *= plane_stride
    return {
        "scale": tuple(scale),
        "translate": tuple(layer.translate),
        "rotate": np.asarray(layer.rotate),
        "shear": np.asarray(layer.shear),
        "affine": layer.affine.affine_matrix,
        "units": tuple(layer.units),
        "axis_labels": tuple(layer.axis_labels),
    }


def text_overlay(viewer: napari.Viewer):
    """The canvas text overlay (``viewer.canvas.overlays.text`` since napari 0.9, else the legacy one)."""
    canvas = getattr(viewer, "canvas", None)
    if canvas is not None and hasattr(canvas, "overlays"):
        return canvas.overlays.text
    return viewer.text_overlay
