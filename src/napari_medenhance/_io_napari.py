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

    ``kwargs`` has the physical ``scale`` (spacing), ``translate`` (origin), ``axis_labels``,
    ``units``, a gray colormap, CT contrast limits, and ``metadata[META_KEY]`` with what the
    writer needs to write the same kind of file back (e.g. the NIfTI header and affine).
    """
    from .core.io import read_dicom_series, read_volume

    if isinstance(path, (list, tuple)):
        paths = [os.fspath(p) for p in path]
        vol = read_volume(paths[0]) if len(paths) == 1 else read_dicom_series(paths)
    else:
        vol = read_volume(path)
    return [layer_data(vol)]


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
    translate = tuple(float(t) for t in (attributes.get("translate") or (0.0,) * ndim))[-ndim:]
    labels = attributes.get("axis_labels")
    labels = tuple(str(lab) for lab in labels) if labels is not None and len(labels) == ndim else None
    like = None
    if isinstance(info, dict) and info.get("format"):
        like = Volume(data=None, spacing=info["spacing"], axis_labels=info["axis_labels"],
                      units=info.get("units"), rgb=bool(info.get("rgb")), origin=info["origin"],
                      format=info["format"], meta=dict(info.get("meta") or {}), name=info.get("name", ""))
    units = like.units if like is not None else _layer_unit(attributes.get("units"))
    spacing_changed = like is None or len(like.spacing) != ndim or any(
        abs(a - b) > 1e-12 * max(abs(a), abs(b), 1.0) for a, b in zip(like.spacing, scale))
    out = write_volume(
        path, data, like,
        # like's own spacing when the layer kept it, so a NIfTI header round-trips untouched
        spacing=scale if spacing_changed else None,
        origin=translate, units=units, axis_labels=labels, rgb=rgb,
    )
    return [str(out)]


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
