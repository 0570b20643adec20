"""zarr arrays and OME-Zarr images (``.zarr`` folders); written one chunk per plane."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .streaming import iter_blocks, read_block
from .volume import Volume, default_labels, fit, norm_unit, stem


def read_zarr(p: Path, lazy: bool) -> Volume:
    import dask.array as da
    import zarr

    try:
        node = zarr.open(str(p), mode="r")
    except Exception as err:  # noqa: BLE001 - zarr raises several types for non-zarr folders
        raise ValueError(f"{p} is not a readable zarr store ({err})") from err
    attrs: dict = {}
    spacing_ngff: list[float] | None = None
    labels_ngff: list[str] | None = None
    unit_ngff = None
    if isinstance(node, zarr.Group):
        group_attrs = dict(node.attrs)
        multiscales = (group_attrs.get("ome") or group_attrs).get("multiscales")
        if multiscales:
            ms = multiscales[0]
            ds0 = ms["datasets"][0]
            arr = node[ds0["path"]]
            for t in ds0.get("coordinateTransformations", []):
                if t.get("type") == "scale":
                    spacing_ngff = [float(v) for v in t["scale"]]
            axes = ms.get("axes") or []
            if axes and isinstance(axes[0], dict):
                labels_ngff = [a.get("name", "") for a in axes]
                unit_ngff = next((a.get("unit") for a in axes if a.get("type") == "space"), None)
        else:
            arrays = list(node.array_keys())
            if len(arrays) != 1:
                raise ValueError(f"zarr group {p} holds {len(arrays)} arrays ({arrays[:5]}); "
                                 "open the array itself (path/to/group.zarr/NAME)")
            arr = node[arrays[0]]
    else:
        arr = node
    attrs = dict(arr.attrs).get("medenhance", {}) or {}
    rgb = bool(attrs.get("rgb", False))
    n = arr.ndim - int(rgb)
    spacing = fit(attrs.get("spacing") or (spacing_ngff[-n:] if spacing_ngff else None), n, 1.0)
    labels = tuple(attrs.get("axis_labels") or (labels_ngff[-n:] if labels_ngff else default_labels(n)))
    data = da.from_zarr(arr) if lazy else np.asarray(arr[...])
    return Volume(data=data, spacing=spacing, axis_labels=labels,
                  units=norm_unit(attrs.get("units") or unit_ngff), rgb=rgb,
                  origin=fit(attrs.get("origin"), n, 0.0), format="zarr",
                  meta={"zarr_attrs": dict(arr.attrs)}, name=stem(p))


def write_zarr(p: Path, data: Any, sp: tuple[float, ...], org: tuple[float, ...],
                units: str | None, labels: tuple[str, ...], rgb: bool) -> None:
    import zarr

    shape = tuple(int(s) for s in data.shape)
    dtype = np.dtype(data.dtype)
    plane_ndim = 3 if rgb else 2
    chunks = (1,) * max(0, len(shape) - plane_ndim) + shape[len(shape) - plane_ndim:]
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent))
    try:
        attrs = {"medenhance": {"spacing": list(sp), "origin": list(org), "units": units,
                                "axis_labels": list(labels), "rgb": rgb}}
        if hasattr(zarr, "create_array"):  # zarr 3
            arr = zarr.create_array(store=str(tmp), shape=shape, chunks=chunks, dtype=dtype,
                                    overwrite=True, attributes=attrs)
        else:  # zarr 2
            arr = zarr.open_array(str(tmp), mode="w", shape=shape, chunks=chunks, dtype=dtype)
            arr.attrs.update(attrs)
        for index in iter_blocks(shape, dtype.itemsize, plane_ndim):
            arr[index if index else ...] = read_block(data, index)
        if p.exists():
            old = p.with_name(f".{p.name}.old-{os.getpid()}")
            os.replace(p, old)
            os.replace(tmp, p)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
