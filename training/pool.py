"""The real data pool (``data_pool.py``) as training / validation planes, with a FIXED split.

    from pool import load_pool          # with training/ on sys.path
    pool = load_pool()                  # Pool(train=[Plane...], val=[Plane...])

Every plane is float32 in [0, 1], ``Y×X`` (gray) or ``Y×X×3`` (RGB), named after its source.

Intensities
-----------
* Gray data and data wider than 8 bits (DICOM CT/MR/CR/US, 16-bit fluorescence, NIfTI volumes,
  8-bit gray slices): robust percentiles
  (0.1, 99.9) of the *whole source* (all planes of a volume together, so planes keep their
  relative brightness), mapped to [0, 1] and clipped. CT keeps its -3024 HU padding, which maps
  to 0 as it does in the inference engine's min/max mapping; the patch sampler skips it.
* 8-bit colour images: / 255.
* Everything else (12/16-bit DICOM, float and 8-bit gray volumes, whose 8 bits rarely span
  their range: Colin27 peaks at 130): robust percentiles, as above.

The split (never the same image in both; planes of one volume only with a gap)
------------------------------------------------------------------------------
=============  ============================================  =======================================
modality       train                                         validation
=============  ============================================  =======================================
CT             693_UNCR (512², HU); pydicom CT_small         eCT_Supplemental frame 0 (512² head CT)
               (128²); explicit_VR-UN (512², abdomen);
               bad_sequence (512², neck)
MR             MR2_UNCR (1024²); MR-SIEMENS-DICOM-With-      emri_small slices 0-9 (64²); pydicom
               Overlays (484²); Colin27 ch2better (0.5 mm,   MR_small (64²); ITK
               23 axial planes); macaque inia19 T1 (13       BrainMidSagittalSlice; ITK KmeansTest
               planes); MNI152 2009 T1 (15 planes); ITK      T1 planes 20, 31, 42; nibabel
               BrainProtonDensitySlice, BrainT1Slice         example4d EPI planes 6, 12, 18
               (BrainWeb), FatMRISlice
CR             RG1_UNCR (chest, 1955×1841)                   RG3_UNCR (extremity) window rows
                                                             1222-1477, cols 732-987 (ankle joint)
US             US1_UNCR (480×640, as gray); color3d_jpeg_    gdcm-US-ALOKA-16 (480×640 pelvis, as
               baseline frames 0, 40, 80 (echo, as gray);    gray through its colour table)
               JPGLosslessP14SV1_1s_1f_8b (768×1024 echo)
fluorescence   nuclei.tif planes 18-44 (cells3d, 256²)       nuclei.tif plane 50 (5-plane gap) and
                                                             stardist img2d.tif (DSB2018, 512²)
phase contrast skimage cell() rows 0-399                     skimage cell() rows 440-659 (a
                                                             disjoint window of the one image)
colour         skimage retina() (fundus), immuno-            stardist histo.jpg (H&E, 300×500);
               histochemistry() (IHC), skin.tif (H&E),       skimage microaneurysms() (fundus
               ITK VisibleWomanHeadSlice (cryosection)       detail, 102²)
=============  ============================================  =======================================

Not used: nuclei.tif planes 0-17 (above the cells: dark and out of focus) and 45-49, 51-59
(next to the validation plane); eCT_Supplemental frame 1 (next to the validation slice);
Colin27 ``ch2``/``ch2bet`` (the same subject as ``ch2better``, which trains, so they would be
neither new training data nor honest validation); pydicom ``examples_overlay`` (a crop of
MR-SIEMENS-DICOM-WithOverlays); pydicom ``examples_rgb_color`` (``US1_UNCR`` shrunk 2×: it was
the validation ultrasound until :func:`duplicates` found it); ITK RatLungSlice1/2 (modality not
documented); the pydicom-data NM bone scan (Poisson noise in the "clean" image, and no second NM
image to validate on: ``JPEG-LL`` is the same scan); OBXXXX1A (a nearly empty frame);
color-pl/-px (colour Doppler); mlut_18 and vlut_04 (SMPTE test patterns); the JPEG-compressed
copies of files that are used.

:func:`load_pool` refuses a split where a validation plane turns up inside a training plane
(:func:`duplicates`: whole or cropped, at 1/4 to 4 times its size).

Gray images stored as RGB (ITK's BrainWeb PNGs) and ultrasound frames are taken as gray (the
channel mean). Radiology volumes are axial planes of the volume in Z×Y×X order.

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
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data_pool  # noqa: E402

from napari_medenhance.core.training import Plane, Pool  # noqa: E402

__all__ = ["GROUPS", "SPLIT", "duplicates", "group_mean", "load_pool", "normalise"]

#: Bump when the normalisation changes (the split is hashed itself).
NORMALISATION_VERSION = "2"

#: (split, modality, source, selection). ``source``: ``dicom:<name>``, ``bio:<file>``,
#: ``stardist:<file>`` or ``skimage:<function>``; ``selection``: ``None`` (the whole 2-D image),
#: ``{"planes": [...]}`` for the first axis of a volume, ``{"window": [y0, y1, x0, x1]}``.
SPLIT: list[tuple[str, str, str, dict | None]] = [
    ("train", "CT", "dicom:693_UNCR", None),
    ("train", "CT", "pydicom:CT_small.dcm", None),
    ("train", "CT", "dicom:explicit_VR-UN", None),
    ("train", "CT", "dicom:bad_sequence", None),
    ("train", "MR", "dicom:MR2_UNCR", None),
    ("train", "MR", "dicom:MR-SIEMENS-DICOM-WithOverlays", None),
    ("train", "MR", "mricron:ch2better", {"planes": list(range(50, 271, 10))}),
    ("train", "MR", "mricron:inia19-t1-brain", {"planes": list(range(16, 113, 8))}),
    ("train", "MR", "nilearn:mni152", {"planes": list(range(30, 171, 10))}),
    ("train", "MR", "itk:BrainProtonDensitySlice.png", {"gray": True}),
    ("train", "MR", "itk:BrainT1Slice.png", {"gray": True}),
    ("train", "MR", "itk:FatMRISlice.png", {"gray": True}),
    ("train", "CR", "dicom:RG1_UNCR", None),
    ("train", "US", "dicom:US1_UNCR", {"gray": True}),
    ("train", "US", "dicom:color3d_jpeg_baseline", {"planes": [0, 40, 80], "gray": True}),
    ("train", "US", "dicom:JPGLosslessP14SV1_1s_1f_8b", None),
    ("train", "fluorescence", "bio:nuclei.tif", {"planes": list(range(18, 45))}),
    ("train", "phase contrast", "skimage:cell", {"window": [0, 400, 0, 550]}),
    ("train", "colour", "skimage:retina", None),
    ("train", "colour", "skimage:immunohistochemistry", None),
    ("train", "colour", "bio:skin.tif", None),
    ("train", "colour", "itk:VisibleWomanHeadSlice.png", None),
    ("val", "CT", "dicom:eCT_Supplemental", {"planes": [0]}),
    ("val", "MR", "dicom:emri_small", {"planes": list(range(10))}),
    ("val", "MR", "pydicom:MR_small.dcm", None),
    ("val", "MR", "itk:BrainMidSagittalSlice.png", None),
    ("val", "MR", "itk:KmeansTest_T1UCharRaw.nii.gz", {"planes": [20, 31, 42]}),
    ("val", "MR", "nibabel:example4d.nii.gz", {"planes": [6, 12, 18]}),
    ("val", "CR", "dicom:RG3_UNCR", {"window": [1222, 1478, 732, 988]}),
    ("val", "US", "dicom:gdcm-US-ALOKA-16", {"gray": True}),
    ("val", "fluorescence", "bio:nuclei.tif", {"planes": [50]}),
    ("val", "fluorescence", "stardist:img2d.tif", None),
    ("val", "phase contrast", "skimage:cell", {"window": [440, 660, 0, 550]}),
    ("val", "colour", "stardist:histo.jpg", None),
    ("val", "colour", "skimage:microaneurysms", None),
]

#: Modality groups that the ship gates and benchmarks report on.
GROUPS = {
    "radiology": ("CT", "MR", "CR", "US"),
    "microscopy": ("fluorescence", "phase contrast", "colour"),
}


def group_mean(rows: Sequence[dict], key: str, mods: Sequence[str], **where) -> float:
    """Mean over the modalities ``mods`` of the per-modality means of ``key`` (rows matching
    ``where``); NaN when none match."""
    sel = [r for r in rows if all(r[k] == v for k, v in where.items())]
    per_mod = [np.mean([r[key] for r in sel if r["modality"] == m]) for m in mods
               if any(r["modality"] == m for r in sel)]
    return float(np.mean(per_mod)) if per_mod else float("nan")


def normalise(a: np.ndarray) -> np.ndarray:
    """float32 [0, 1]: 8-bit colour / 255; anything else by percentiles (0.1, 99.9), clipped."""
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[-1] == 3:
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
    if kind == "pydicom":
        return data_pool.pydicom_test_file(name)
    if kind == "nibabel":
        return data_pool.nibabel_test_file(name)
    if kind == "mricron":
        return data_pool.mricron(name)
    if kind == "nilearn" and name == "mni152":
        return data_pool.mni152()
    if kind == "itk":
        return data_pool.itk_example(name)
    if kind == "skimage":
        from skimage import data

        fn: Callable[[], np.ndarray] = getattr(data, name)
        return fn()
    raise ValueError(f"unknown source {source!r}")


def _gray(a: np.ndarray) -> np.ndarray:
    """The channel mean of RGB data (Y×X×3, or a volume of RGB frames); anything else as is."""
    return a.astype(np.float32).mean(axis=-1) if a.ndim >= 3 and a.shape[-1] == 3 else a


def _planes(split: str) -> list[tuple[str, str, np.ndarray]]:
    out = []
    cache: dict[str, np.ndarray] = {}
    for which, modality, source, sel in SPLIT:
        if which != split:
            continue
        gray = bool(sel and sel.get("gray"))
        key = f"{source}|gray" if gray else source
        if key not in cache:
            raw = _read(source)
            if gray:
                raw = _gray(raw)
            cache[key] = normalise(raw)
        a = cache[key]
        name = source.split(":", 1)[1]
        if sel is None or set(sel) == {"gray"}:
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


def duplicates(val: Sequence[Plane], train: Sequence[Plane], *, threshold: float = 0.95,
               thumb: int = 40) -> list[tuple[str, str, float, float]]:
    """Validation planes that turn up inside a training plane: ``(val name, train name, scale,
    normalised cross-correlation)`` for each match at or above ``threshold``.

    A plane is matched as a whole or as a crop, at 1/4 to 4 times its size (``scale`` is
    validation pixels per training pixel: 0.5 = the training image shrunk 2×). pydicom's
    ``examples_rgb_color`` is pydicom-data's ``US1_UNCR`` shrunk 2×, which no check by file name
    or pixel hash finds. The search runs on thumbnails (the validation plane at about ``thumb``
    pixels), in gray. ``python training/pool.py --closest [SOURCE ...]`` prints every
    validation plane's closest training plane."""
    from skimage.feature import match_template
    from skimage.transform import rescale

    # Flat windows (padding, background) make the correlation's denominator vanish; a little
    # fixed noise keeps it bounded without moving a real match.
    rng = np.random.default_rng(0)
    found = []
    for v in val:
        vg = _gray(v.data)
        g = min(1.0, thumb / max(vg.shape))
        vt = rescale(vg, g, anti_aliasing=g < 1)
        vt = vt + rng.normal(0.0, 0.01, vt.shape)
        best = (0.0, "", 0.0)
        for t in train:
            tg = _gray(t.data)
            for scale in (0.25, 0.5, 1.0, 2.0, 4.0):
                f = g * scale
                if f > 1.0:
                    continue
                tt = rescale(tg, f, anti_aliasing=f < 1) if f < 1 else tg
                if tt.shape[0] < vt.shape[0] or tt.shape[1] < vt.shape[1]:
                    continue
                tt = tt + rng.normal(0.0, 0.01, tt.shape)
                ncc = float(match_template(tt, vt).max())
                if ncc > best[0]:
                    best = (ncc, t.name, scale)
        if best[0] >= threshold:
            found.append((v.name, best[1], best[2], best[0]))
    return found


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
    leaks = duplicates(*([Plane(n, m, a) for n, m, a in parts[s]] for s in ("val", "train")))
    if leaks:
        raise ValueError("validation planes found inside training planes (name, train name, "
                         f"scale, correlation): {leaks}")
    if cache:
        arrays = {f"{s}{i}": a for s in parts for i, (_, _, a) in enumerate(parts[s])}
        manifest = {s: [[n, m] for n, m, _ in parts[s]] for s in parts}
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, manifest=np.array(json.dumps(manifest)), **arrays)
        tmp.replace(path)
    return Pool(*([Plane(n, m, a) for n, m, a in parts[s]] for s in ("train", "val")))


def _closest(extra: Sequence[str]) -> None:
    """Print the closest training plane of every validation plane and of each ``extra`` source
    (read whole, in gray), highest correlation first (:func:`duplicates` with no threshold)."""
    p = load_pool()
    planes = list(p.val) + [Plane(src, "extra", normalise(_gray(_read(src)))) for src in extra]
    for name, train, scale, ncc in sorted(duplicates(planes, p.train, threshold=0.0),
                                          key=lambda r: -r[3]):
        print(f"{ncc:.3f}  {name}  in  {train}  (scale {scale:g})")


if __name__ == "__main__" and sys.argv[1:2] == ["--closest"]:
    # e.g. python training/pool.py --closest pydicom:examples_rgb_color.dcm
    _closest(sys.argv[2:])
elif __name__ == "__main__":
    p = load_pool()
    for split, planes in (("train", p.train), ("val", p.val)):
        px = sum(q.data.shape[0] * q.data.shape[1] for q in planes)
        print(f"{split}: {len(planes)} planes, {px / 1e6:.1f} Mpx")
        for q in planes:
            print(f"  {q.modality:13s} {q.name:32s} {q.data.shape}")
