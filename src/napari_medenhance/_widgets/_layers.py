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


def plane_transform_kwargs(layer: napari.layers.Layer, index: tuple[int, ...]) -> dict[str, Any]:
    """:func:`transform_kwargs` for one plane of ``layer`` kept as an array with singleton
    leading axes (shape ``(1, ..., 1, Y, X)``), so that it sits exactly on plane ``index``.

    napari maps data to world as ``affine(translate + rotate·shear·scale·d)``; shifting the
    data by ``index`` along the leading axes is therefore the same as adding
    ``rotate·shear·scale·index`` to the translate, which stays exact with rotation and shear.
    """
    from napari.utils.transforms import CompositeAffine

    kw = transform_kwargs(layer)
    offset = np.zeros(layer.ndim)
    offset[: len(index)] = index
    linear = CompositeAffine(
        scale=layer.scale, translate=np.zeros(layer.ndim), rotate=layer.rotate, shear=layer.shear
    )
    kw["translate"] = tuple(np.asarray(layer.translate, dtype=float) + linear(offset))
    return kw


class WorkerError(Exception):
    """A ``RuntimeError`` from a worker's job, re-raised so that the worker reports it."""


def surface_runtime_errors(job, *args: Any, **kwargs: Any):
    """Run the generator function ``job(*args, **kwargs)`` as a generator, turning its
    ``RuntimeError``\\ s into :class:`WorkerError`.

    superqt's ``GeneratorWorker`` takes a ``RuntimeError`` from the generator for "the worker
    object was deleted": it only warns and emits neither ``errored`` nor ``finished``, so a
    widget would wait for ever. torch reports out-of-memory and most kernel failures as
    ``RuntimeError``. Pass this to ``create_worker`` with the job as its first argument.
    """
    try:
        return (yield from job(*args, **kwargs))
    except RuntimeError as err:
        raise WorkerError(str(err)) from err
