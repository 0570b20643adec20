"""napari reader and writer hooks over :mod:`napari_medenhance.core.io` (NIfTI, DICOM, TIFF).

Kept thin and cheap to import: napari imports this module to ask whether a path is ours, so
nibabel, pydicom and tifffile are imported only inside the functions that read or write.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

#: Layer-metadata key under which a read volume's geometry and file metadata travel, so that
#: saving the layer (or a result made from it) can write the same header back.
META_KEY = "medenhance_io"

#: Soft-tissue window (level 40 HU, width 400 HU): the usual first look at body CT. napari's
#: default min-max would stretch air (-1000) to metal or bone (> 3000 HU) over the grey ramp and
#: leave soft tissue, where most findings are, as one flat grey.
CT_SOFT_TISSUE_LIMITS = (-160.0, 240.0)

_SPATIAL = {"x", "y", "z"}


def _is_ours(path: str) -> bool:
    low = path.lower()
    if low.endswith((".nii", ".nii.gz", ".dcm")):
        return os.path.isfile(path)
    if os.path.isdir(path) and not low.rstrip("/\\").endswith(".zarr"):
        from .core.io import is_dicom_folder

        return is_dicom_folder(path)
    return False


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list] | None:
    """npe2 reader hook: a reader for NIfTI files, DICOM files and folders of DICOM files.

    Returns None for anything else (e.g. a folder without DICOM files) so other readers get
    their chance. Several ``.dcm`` paths at once are read as the slices of one series.
    """
    if isinstance(path, (list, tuple)):
        paths = [os.fspath(p) for p in path]
        if len(paths) == 1:
            return get_reader(paths[0])
        if paths and all(p.lower().endswith(".dcm") and os.path.isfile(p) for p in paths):
            return read_layers
        return None
    path = os.fspath(path)
    return read_layers if _is_ours(path) else None


def read_layers(path: str | Sequence[str]) -> list[tuple[Any, dict, str]]:
    """Read one volume as napari LayerData: ``[(data, kwargs, "image")]``.

    ``kwargs`` has the physical ``scale`` (spacing), ``translate`` (origin), for an oblique
    volume ``rotate`` (or ``affine``, a shear), ``axis_labels``, ``units``, a gray colormap, CT
    contrast limits, and ``metadata[META_KEY]`` with what the writer needs to write the same
    kind of file back (e.g. the NIfTI header and affine). Radiology volumes land in patient
    space (LPS mm, shown radiologically: :mod:`napari_medenhance.core.io.patient`); with a
    viewer open, its orientation labels (R/L, A/P, S/I) are switched on.
    """
    from .core.io import read_dicom_series, read_volume

    if isinstance(path, (list, tuple)):
        paths = [os.fspath(p) for p in path]
        vol = (read_volume(paths[0], orient=True) if len(paths) == 1
               else read_dicom_series(paths, orient=True))
    else:
        vol = read_volume(path, orient=True)
    if vol.meta.get("patient_space"):
        _show_orientation_labels()
    return [layer_data(vol)]


def _show_orientation_labels() -> None:
    """Orientation labels on the current viewer, if there is one (a reader gets no viewer)."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # noqa: BLE001 - no Qt, no app: a headless read needs no labels
        return
    if viewer is not None:
        from ._widgets.orientation_widget import install_orientation_labels

        install_orientation_labels(viewer)


def layer_data(vol: Any) -> tuple[Any, dict, str]:
    """napari LayerData for a :class:`~napari_medenhance.core.io.Volume`."""
    time_unit = vol.meta.get("time_unit") or "s"
    units = tuple(
        (vol.units or "pixel") if lab in _SPATIAL else (time_unit if lab == "t" else "pixel")
        for lab in vol.axis_labels
    )
    kwargs: dict[str, Any] = {
        "name": vol.name,
        "scale": tuple(vol.spacing),
        "translate": tuple(vol.origin),
        "axis_labels": tuple(vol.axis_labels),
        "units": units,
        "rgb": bool(vol.rgb),
        "metadata": {META_KEY: volume_info(vol)},
    }
    if vol.direction is not None:
        from .core.io.patient import napari_transform_kwargs

        kwargs.update(napari_transform_kwargs(len(vol.spacing), vol.origin, vol.direction))
    if not vol.rgb:
        kwargs["colormap"] = "gray"
        limits = _contrast_limits(vol)
        if limits is not None:
            kwargs["contrast_limits"] = limits
    return (vol.data, kwargs, "image")


def volume_info(vol: Any) -> dict:
    """Everything of a Volume except its pixels (what travels in layer metadata)."""
    return {
        "format": vol.format,
        "spacing": tuple(vol.spacing),
        "origin": tuple(vol.origin),
        "axis_labels": tuple(vol.axis_labels),
        "units": vol.units,
        "rgb": bool(vol.rgb),
        "name": vol.name,
        "meta": vol.meta,
        "direction": vol.direction,
    }


def _contrast_limits(vol: Any) -> tuple[float, float] | None:
    if vol.format != "dicom":
        return None  # NIfTI carries no modality; napari's own estimate is the honest default
    window = vol.meta.get("window")
    if window:  # the window the scanner or reader stored: the intended view of this series
        center, width = window
        return (center - width / 2.0, center + width / 2.0)
    if vol.meta.get("modality") == "CT":
        return CT_SOFT_TISSUE_LIMITS
    return None


def write_image(path: str, data: Any, attributes: dict) -> list[str]:
    """npe2 single-layer writer: an image layer to ``.nii``, ``.nii.gz`` or ``.tif``/``.tiff``.

    The layer's ``scale`` and ``translate`` become the spacing and origin. A layer read by this
    plugin keeps its original file metadata: saving a NIfTI-born layer writes its header and
    affine back unchanged (scaled only if the layer's scale was changed).
    """
    from .core.io import Volume, write_volume

    info = (attributes.get("metadata") or {}).get(META_KEY)
    rgb = bool(attributes.get("rgb", False))
    ndim = len(data.shape) - int(rgb)
    scale = tuple(float(s) for s in (attributes.get("scale") or (1.0,) * ndim))[-ndim:]
    origin, direction = _layer_placement(attributes, ndim)
    labels = attributes.get("axis_labels")
    labels = tuple(str(lab) for lab in labels) if labels is not None and len(labels) == ndim else None
    like = None
    if isinstance(info, dict) and info.get("format"):
        like = Volume(data=None, spacing=info["spacing"], axis_labels=info["axis_labels"],
                      units=info.get("units"), rgb=bool(info.get("rgb")), origin=info["origin"],
                      format=info["format"], meta=dict(info.get("meta") or {}),
                      name=info.get("name", ""), direction=info.get("direction"))
    units = like.units if like is not None else _layer_unit(attributes.get("units"))
    spacing_changed = like is None or len(like.spacing) != ndim or any(
        abs(a - b) > 1e-12 * max(abs(a), abs(b), 1.0) for a, b in zip(like.spacing, scale))
    out = write_volume(
        path, data, like,
        # like's own spacing when the layer kept it, so a NIfTI header round-trips untouched
        spacing=scale if spacing_changed else None,
        origin=origin, units=units, axis_labels=labels, rgb=rgb, direction=direction,
    )
    return [str(out)]


def _layer_placement(attributes: dict, ndim: int) -> tuple[tuple[float, ...], Any]:
    """``(origin, direction)`` of a layer from its napari transform attributes.

    ``origin`` is the world position of data index 0 (napari's ``translate`` unless
    ``affine`` moves it); ``direction`` is the 3×3 rotation/shear of the last three axes
    (napari's ``affine · rotate · shear``; ``scale`` stays the spacing), None when the layer
    has none. So a result layer made with
    its source's transform (``transform_kwargs``) is written where it is shown.
    """
    import numpy as np

    def matrix(key: str, size: int) -> np.ndarray:
        value = attributes.get(key)
        if value is None:
            return np.eye(size)
        arr = np.asarray(value, dtype=float)
        return arr if arr.shape == (size, size) else np.eye(size)

    translate = np.asarray(attributes.get("translate") or (0.0,) * ndim, dtype=float)[-ndim:]
    rotate = matrix("rotate", ndim)
    shear_arg = attributes.get("shear")
    shear = np.eye(ndim)
    if shear_arg is not None:
        sh = np.asarray(shear_arg, dtype=float)
        if sh.shape == (ndim, ndim):
            shear = sh
        elif sh.size == ndim * (ndim - 1) // 2:  # napari's upper-triangle vector
            shear[np.triu_indices(ndim, 1)] = sh
    affine = matrix("affine", ndim + 1)
    linear = affine[:ndim, :ndim] @ rotate @ shear
    origin = tuple(float(v) for v in affine[:ndim, :ndim] @ translate + affine[:ndim, ndim])
    direction = None
    if ndim >= 3 and not np.allclose(linear, np.eye(ndim), atol=1e-12):
        direction = linear[-3:, -3:]
    return origin, direction


def _layer_unit(units: Any) -> str | None:
    """One spatial unit from napari's per-axis units (pint units or strings)."""
    if not units:
        return None
    names = []
    for u in units:
        text = str(u)
        names.append({"micrometer": "µm", "millimeter": "mm", "nanometer": "nm",
                      "meter": "m", "centimeter": "cm", "pixel": None}.get(text, text))
    spatial = [n for n in names if n]
    return spatial[-1] if spatial else None


__all__ = ["CT_SOFT_TISSUE_LIMITS", "META_KEY", "get_reader", "layer_data", "read_layers",
           "volume_info", "write_image"]
