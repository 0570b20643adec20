"""The real data pool (../shared/DATA.md) as training / validation planes, with a FIXED split.

    from pool import load_pool          # with training/ on sys.path
    pool = load_pool()                  # Pool(train=[Plane...], val=[Plane...])

Every plane is float32 in [0, 1], ``Y×X`` (gray) or ``Y×X×3`` (RGB), named after its source.

Intensities
-----------
* Integer data wider than 8 bits (DICOM CT/MR/CR, 16-bit fluorescence): robust percentiles
  (0.1, 99.9) of the *whole source* (all planes of a volume together, so planes keep their
  relative brightness), mapped to [0, 1] and clipped. CT keeps its -3024 HU padding, which maps
  to 0 as it does in the inference engine's min/max mapping; the patch sampler skips it.
* 8-bit data (colour images): / 255.

The split (never the same image in both; planes of one volume only with a gap)
------------------------------------------------------------------------------
========  ===========================================  =========================================
modality  train                                        validation
========  ===========================================  =========================================
CT        693_UNCR (512², HU)                          eCT_Supplemental frame 0 (512² head CT)
MR        MR2_UNCR (1024²)                             emri_small slices 0-9 (64² each)
CR        RG1_UNCR (chest, 1955×1841)                  RG3_UNCR (extremity) window rows
                                                       1222-1477, cols 732-987 (the ankle joint;
                                                       its centre is a featureless shaft)
fluor.    nuclei.tif planes 18-44 (cells3d, 256²)      nuclei.tif plane 50 (5-plane gap) and
                                                       stardist img2d.tif (DSB2018, 512²)
colour    skimage retina() (fundus), skimage           stardist histo.jpg (H&E, 300×500)
          immunohistochemistry() (IHC), napari-bio-
          sample-data skin.tif (H&E, 960×1280)
========  ===========================================  =========================================

Not used: nuclei.tif planes 0-17 (above the cells: dark and out of focus) and 45-49, 51-59
(next to the validation plane), eCT_Supplemental frame 1 (the slice next to the validation
slice).

The images shipped as the plugin's sample data all come from the *training* side: ``ct_slice``
= 693_UNCR, ``mr_slice`` = MR2_UNCR, ``nuclei_stack`` = nuclei.tif planes 18-41 and ``ihc_rgb``
= immunohistochemistry(); numbers measured on them with a model trained here are training-set
numbers. Validation numbers (model cards) come only from the validation column.

The loaded pool is cached as an uncompressed ``.npz`` (no pickle) in the data cache folder
(``$MEDENHANCE_DATA`` or ``~/.cache/medenhance-data``), keyed by a hash of the split below.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data_pool  # noqa: E402

from napari_medenhance.core.training import Plane, Pool  # noqa: E402

__all__ = ["SPLIT", "load_pool", "normalise"]

#: Bump when the normalisation changes (the split is hashed itself).
NORMALISATION_VERSION = "1"

#: (split, modality, source, selection). ``source``: ``dicom:<name>``, ``bio:<file>``,
#: ``stardist:<file>`` or ``skimage:<function>``; ``selection``: ``None`` (the whole 2-D image),
#: ``{"planes": [...]}`` for the first axis of a volume, ``{"window": [y0, y1, x0, x1]}``.
SPLIT: list[tuple[str, str, str, dict | None]] = [
    ("train", "CT", "dicom:693_UNCR", None),
    ("train", "MR", "dicom:MR2_UNCR", None),
    ("train", "CR", "dicom:RG1_UNCR", None),
    ("train", "fluorescence", "bio:nuclei.tif", {"planes": list(range(18, 45))}),
    ("train", "colour", "skimage:retina", None),
    ("train", "colour", "skimage:immunohistochemistry", None),
    ("train", "colour", "bio:skin.tif", None),
    ("val", "CT", "dicom:eCT_Supplemental", {"planes": [0]}),
    ("val", "MR", "dicom:emri_small", {"planes": list(range(10))}),
    ("val", "CR", "dicom:RG3_UNCR", {"window": [1222, 1478, 732, 988]}),
    ("val", "fluorescence", "bio:nuclei.tif", {"planes": [50]}),
    ("val", "fluorescence", "stardist:img2d.tif", None),
    ("val", "colour", "stardist:histo.jpg", None),
]


def normalise(a: np.ndarray) -> np.ndarray:
    """float32 [0, 1]: uint8 / 255; any other dtype by percentiles (0.1, 99.9), clipped."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    a = a.astype(np.float32)
    lo, hi = np.percentile(a, (0.1, 99.9))
    if not hi > lo:
        raise ValueError(f"constant image (range {lo}..{hi})")
    return np.clip((a - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32)


def _read(source: str) -> np.ndarray:
    kind, name = source.split(":", 1)
    if kind == "dicom":
        return data_pool.dicom_array(name)[0]
    if kind == "bio":
        return data_pool.bio_sample(name)
    if kind == "stardist":
        return data_pool.stardist_image(name)
    if kind == "skimage":
        from skimage import data

        fn: Callable[[], np.ndarray] = getattr(data, name)
        return fn()
    raise ValueError(f"unknown source {source!r}")


def _planes(split: str) -> list[tuple[str, str, np.ndarray]]:
    out = []
    cache: dict[str, np.ndarray] = {}
    for which, modality, source, sel in SPLIT:
        if which != split:
            continue
        if source not in cache:
            cache[source] = normalise(_read(source))
        a = cache[source]
        name = source.split(":", 1)[1]
        if sel is None:
            out.append((name, modality, a))
        elif "planes" in sel:
            out += [(f"{name}[{z}]", modality, a[z]) for z in sel["planes"]]
        else:
            y0, y1, x0, x1 = sel["window"]
            out.append((f"{name}[{y0}:{y1},{x0}:{x1}]", modality, a[y0:y1, x0:x1]))
    return out


def _cache_path() -> Path:
    key = json.dumps([SPLIT, NORMALISATION_VERSION], sort_keys=True).encode()
    return data_pool.cache_dir() / f"pool-{hashlib.sha256(key).hexdigest()[:12]}.npz"


def load_pool(*, cache: bool = True) -> Pool:
    """The fixed train / validation pool (see the module docstring); cached as .npz."""
    path = _cache_path()
    if cache and path.exists():
        with np.load(path, allow_pickle=False) as z:
            manifest = json.loads(str(z["manifest"]))
            return Pool(
                *(
                    [Plane(n, m, z[f"{s}{i}"]) for i, (n, m) in enumerate(manifest[s])]
                    for s in ("train", "val")
                )
            )
    parts = {s: _planes(s) for s in ("train", "val")}
    if cache:
        arrays = {f"{s}{i}": a for s in parts for i, (_, _, a) in enumerate(parts[s])}
        manifest = {s: [[n, m] for n, m, _ in parts[s]] for s in parts}
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, manifest=np.array(json.dumps(manifest)), **arrays)
        tmp.replace(path)
    return Pool(*([Plane(n, m, a) for n, m, a in parts[s]] for s in ("train", "val")))


if __name__ == "__main__":
    p = load_pool()
    for split, planes in (("train", p.train), ("val", p.val)):
        px = sum(q.data.shape[0] * q.data.shape[1] for q in planes)
        print(f"{split}: {len(planes)} planes, {px / 1e6:.1f} Mpx")
        for q in planes:
            print(f"  {q.modality:13s} {q.name:32s} {q.data.shape}")
