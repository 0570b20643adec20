"""Real sample images shipped with the plugin (napari sample-data contributions).

Each loader returns napari LayerData tuples ``(data, kwargs, "image")`` with the physical
``scale``, ``units`` and ``axis_labels`` of the source. Provenance and licences: NOTICE.md here.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent


@lru_cache(maxsize=1)
def index() -> dict[str, dict[str, Any]]:
    """The sample catalogue: name -> metadata (file, shape, dtype, scale, units, source, licence)."""
    return json.loads((HERE / "samples.json").read_text(encoding="utf-8"))


def load(key: str) -> np.ndarray:
    """The pixel data of one sample, e.g. ``load("ct_slice")`` -> (512, 512) int16 in HU."""
    import tifffile

    meta = index()[key]
    return tifffile.imread(HERE / meta["file"])


def _layer(key: str) -> list[tuple[np.ndarray, dict[str, Any], str]]:
    meta = index()[key]
    kwargs: dict[str, Any] = {
        "name": meta["name"],
        "scale": tuple(meta["scale"]),
        "units": tuple(meta["units"]),
        "axis_labels": tuple(meta["axis_labels"]),
        "metadata": {"source": meta["source"], "licence": meta["licence"]},
    }
    if meta.get("rgb"):
        kwargs["rgb"] = True
    for opt in ("colormap", "contrast_limits"):
        if opt in meta:
            kwargs[opt] = meta[opt]
    return [(load(key), kwargs, "image")]


def ct_slice() -> list:
    """Chest CT slice, 512×512 int16 Hounsfield units, 0.479 mm pixels."""
    return _layer("ct_slice")


def mr_slice() -> list:
    """MR slice, 1024×1024 uint16 (12-bit), 0.195 mm pixels."""
    return _layer("mr_slice")


def nuclei_stack() -> list:
    """Fluorescence nuclei, 24×256×256 uint16 (Z, Y, X), 0.29×0.26×0.26 µm voxels."""
    return _layer("nuclei_stack")


def ihc_rgb() -> list:
    """Immunohistochemistry colour image, 512×512×3 uint8."""
    return _layer("ihc_rgb")
