"""Real test images (bundled with scikit-image, offline) and real distortions for metric tests.

Everything is seeded so the tests are deterministic.
"""

from __future__ import annotations

import numpy as np
import skimage.data as skd
from scipy import ndimage as ndi


def cell() -> np.ndarray:
    """Fluorescence microscopy of a cell, (660, 550) uint8."""
    return skd.cell()


def phantom() -> np.ndarray:
    """Shepp-Logan CT phantom, (400, 400) float64 in [0, 1]."""
    return skd.shepp_logan_phantom()


def ihc() -> np.ndarray:
    """Immunohistochemistry (DAB) slide, (512, 512, 3) uint8 RGB."""
    return skd.immunohistochemistry()


def retina(crop: int = 640) -> np.ndarray:
    """Fundus photograph, central ``crop x crop`` region of the (1411, 1411, 3) uint8 RGB image
    (the full image is slow on a shared CPU and mostly black border)."""
    r = skd.retina()
    o = (r.shape[0] - crop) // 2
    return r[o : o + crop, o : o + crop]


def microaneurysms() -> np.ndarray:
    """Retinal microaneurysms, (102, 102) uint8."""
    return skd.microaneurysms()


def add_noise(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Additive Gaussian noise, ``sigma`` in the image's own units, clipped and cast back to
    the input dtype (floats in [0, 1] stay in [0, 1])."""
    rng = np.random.default_rng(seed)
    out = img.astype(np.float64) + rng.normal(0.0, sigma, img.shape)
    if img.dtype.kind in "ui":
        info = np.iinfo(img.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(img.dtype)
    if img.min() >= 0 and img.max() <= 1:
        out = np.clip(out, 0.0, 1.0)
    return out.astype(img.dtype)


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over Y and X only (not across colour channels), float64 result."""
    s = (sigma, sigma, 0) if img.ndim == 3 else sigma
    return ndi.gaussian_filter(img.astype(np.float64), s)


def elastic(img: np.ndarray, alpha: float, sigma: float, seed: int = 0) -> np.ndarray:
    """Elastic deformation as in the LaSSIM paper (Simard et al. 2003): uniform random
    displacement fields in [-1, 1] pixels, smoothed by a Gaussian of std ``sigma`` (pixels),
    scaled by ``alpha``; resampled with ``map_coordinates`` (linear). float64 result."""
    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    dy = ndi.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, mode="constant") * alpha
    dx = ndi.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, mode="constant") * alpha
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = [yy + dy, xx + dx]

    def warp(p: np.ndarray) -> np.ndarray:
        return ndi.map_coordinates(p.astype(np.float64), coords, order=1, mode="reflect")

    if img.ndim == 3:
        return np.stack([warp(img[..., c]) for c in range(img.shape[2])], axis=-1)
    return warp(img)


def percentile_norm(a: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]: the (0.1, 99.9) percentiles mapped to 0 and 1, clipped (the training
    pool's normalisation)."""
    a = a.astype(np.float32)
    lo, hi = np.percentile(a, (0.1, 99.9))
    return np.clip((a - lo) / (hi - lo), 0, 1)


def script_pool():
    """A small pool of the shipped sample images for the training-script tests (the real pool
    is fetched from package registries and too large for a test): CT, MR and fluorescence on
    both sides, validation planes 64² (multiples of 4 for SR)."""
    from napari_medenhance.core.training import Plane, Pool
    from napari_medenhance.sample_data import load

    ct = percentile_norm(load("ct_slice"))
    mr = percentile_norm(load("mr_slice"))
    nuc = percentile_norm(load("nuclei_stack"))
    return Pool(
        train=[Plane("ct", "CT", ct[:, :384]), Plane("mr", "MR", mr[:600]),
               Plane("nuc", "fluorescence", nuc[5])],
        val=[Plane("ct-v", "CT", ct[100:164, 384:448]), Plane("mr-v", "MR", mr[700:764, 300:364]),
             Plane("nuc-v", "fluorescence", nuc[20][:64, :64])],
    )


def write_ct_series(folder, planes) -> None:
    """A minimal CT series (one file per plane, 12-bit stored values, HU = raw - 1024)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    for k, raw in enumerate(planes):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", "1.2.3.4", k + 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 2.5 * k], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.5
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.Rows, ds.Columns = raw.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = raw.astype("<u2").tobytes()
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
