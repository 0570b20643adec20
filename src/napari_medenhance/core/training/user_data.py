"""The user's own images as training data: numpy / dask arrays (napari layer data), image files
and folders of TIFFs, turned into a :class:`~.patches.Pool` with a fixed train / validation
split (real low-/high-quality pairs: :mod:`.paired_data`, which reads and splits them with the
rules here).

What a *source* is
------------------
One array, one file or one folder:

* an array (numpy, dask, anything with ``shape`` / ``dtype`` / ``__getitem__``), napari axis
  order ``(..., Y, X)`` (gray) or ``(..., Y, X, C)`` (RGB when ``rgb`` says so; ``rgb=None``
  guesses as napari does: a last axis of 3 or 4 on an array of 3 or more dimensions; an alpha
  channel is dropped). Every leading axis (Z, T, channels...) is a stack of 2-D planes;
* a file :func:`~napari_medenhance.core.io.read_volume` reads (TIFF, NIfTI, DICOM, zarr);
* a folder: every ``.tif`` / ``.tiff`` in it (sorted by name, not recursive), one source each;
  a folder without TIFFs is read as one DICOM series (or a zarr store).

``data`` is one source or a list of them. Planes are read one at a time (a dask stack is never
computed whole), and at most ``max_planes`` evenly spaced planes are used per source, which
bounds memory (each plane is held as float32).

Intensities (one rule per source, "per-stack")
-----------------------------------------------
Every source is mapped to float32 [0, 1] on its own, with one mapping for all of its planes, so
the planes of a stack keep their relative brightness:

* floats already within [0, 1]: unchanged (the inference engine takes them as they are too);
* ``uint8`` and ``bool``: divided by 255 (resp. 1), the stored contrast is kept;
* anything else (12/16-bit microscopy, CT in HU, MR, floats outside [0, 1]): the robust
  percentiles (0.1, 99.9) of the whole stack (a strided sample of at most ~16 M values; colour
  channels jointly so hues are kept) map to 0 and 1, values outside are clipped. This is what
  ``training/pool.py`` does for the project's 16-bit data: a few hot pixels or the -3024 HU
  padding of a CT must not squash the tissue into a sliver of the range. (At inference the
  engine maps a whole array by its min and max; for typical stacks the two differ by the clipped
  0.1 % tails.)

A constant source, or one holding NaN / inf, is refused with a ``ValueError``. Paired stacks
(LQ and HQ) are normalised independently, as CARE does, so a gain or offset between the two
acquisitions is not something the network must learn (at inference the engine maps the output
back to the input's own range anyway).

The validation part
-------------------
Whole planes, chosen deterministically (``seed``): ``max(1, round(val_fraction · N))`` of the
N usable planes, evenly spaced through the data from a seeded offset (so they sample the whole
depth, not one end). Planes within ``gap`` planes of a validation plane *of the same stack* are
used on neither side: neighbouring slices of a fine z-stack are near-copies, and training on
them would make the validation numbers optimistic (when that would leave no training plane the
gap is dropped). Nearly constant planes (standard deviation below ``min_std`` after
normalisation: blank slices above or below the sample) are left out altogether.

When only one usable plane exists (a single 2-D image), it is split spatially into two disjoint
regions: the last ``max(val_fraction, 0.2)`` of its longer axis (at least 32 pixels) is the
validation region, the rest the training region.

Training patches are drawn by the recipes' samplers, which reject empty background
(:class:`~.patches.PatchSampler`: mostly-black or near-constant patches are redrawn); the
paired sampler (:mod:`.paired_data`) applies the same test to the HQ window.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .patches import Plane, Pool

__all__ = [
    "MAX_PLANES",
    "Stack",
    "UserData",
    "load_user_data",
    "normalise_stack",
    "read_sources",
]

#: Planes used per source at most (evenly spaced); bounds memory (float32 per plane).
MAX_PLANES = 128
#: Values sampled (strided) for the normalisation percentiles of one source.
_PERCENTILE_SAMPLE = 1 << 24
#: Percentiles mapped to 0 and 1 for data other than [0, 1] floats and 8-bit.
PERCENTILES = (0.1, 99.9)
#: Smallest validation region (pixels along the split axis) of a single image split in two.
MIN_REGION = 32
#: Modality given to the user's planes (one data set: patches are drawn in proportion to area).
MODALITY = "user"
_TIFF = (".tif", ".tiff")


# ------------------------------------------------------------------------------ reading


@dataclass
class Stack:
    """One source, read and normalised.

    Attributes:
        name: where it comes from (file name, or the caller's name for an array).
        planes: ``(index, plane)`` pairs: the leading-axes index of each used plane and the
            plane as float32 ``Y×X`` or ``Y×X×3`` in [0, 1].
        rgb: colour planes.
        info: what the model card says about it: ``shape``, ``dtype``, ``normalisation``,
            ``planes_total``, ``planes_used``.
    """

    name: str
    planes: list[tuple[tuple[int, ...], np.ndarray]]
    rgb: bool
    info: dict[str, Any] = field(default_factory=dict)


def _guess_rgb(shape: tuple[int, ...], rgb: bool | None) -> bool:
    if rgb is None:
        return len(shape) >= 3 and shape[-1] in (3, 4)
    if rgb and (len(shape) < 3 or shape[-1] not in (3, 4)):
        raise ValueError(f"rgb=True needs a last axis of 3 or 4 colours; got shape {shape}")
    return bool(rgb)


def _expand(source: Any) -> list[tuple[str, Any, bool | None]]:
    """``(name, array, rgb or None)`` for one source (a folder may give several)."""
    if isinstance(source, (str, os.PathLike)):
        from ..io import read_volume

        p = Path(source).expanduser()
        if not p.exists():
            raise ValueError(f"no such file or folder: {p}")
        if p.is_dir() and p.suffix.lower() != ".zarr":
            tiffs = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in _TIFF
                           and not f.name.startswith("."))
            if tiffs:
                out = []
                for f in tiffs:
                    vol = read_volume(f, lazy=True)
                    out.append((f.name, vol.data, vol.rgb))
                return out
        vol = read_volume(p, lazy=True)  # a file, a DICOM series folder or a zarr store
        return [(p.name, vol.data, vol.rgb)]
    if not hasattr(source, "shape") or not hasattr(source, "dtype"):
        raise ValueError(
            f"a training source must be an array (numpy, dask) or a path; got "
            f"{type(source).__name__}"
        )
    return [("", source, None)]


def _sources(data: Any) -> list[Any]:
    if isinstance(data, (list, tuple)):
        if not data:
            raise ValueError("no training data given: pass an array, a file or a folder")
        return list(data)
    return [data]


def normalise_stack(raw: np.ndarray, *, name: str = "data") -> tuple[np.ndarray, str]:
    """Map one stack to float32 [0, 1] by the module's rule; ``(array, description)``.

    ``raw``: the stack (or a sample of its planes stacked), any real dtype, ``(..., Y, X[, 3])``.

    Raises:
        ValueError: complex data, NaN / inf, or a constant stack.
    """
    a = np.asarray(raw)
    if a.dtype.kind == "c":
        raise ValueError(f"{name}: complex data ({a.dtype}) cannot be trained on; take its "
                         "magnitude first")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name}: unsupported dtype {a.dtype}")
    if a.dtype == np.bool_:
        return a.astype(np.float32), "bool: 0/1"
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0), "uint8: / 255"
    if a.dtype.kind == "f":
        lo, hi = float(np.min(a)), float(np.max(a))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name}: the data hold NaN or inf values; replace them (e.g. "
                             "np.nan_to_num) before training")
        if lo >= 0.0 and hi <= 1.0:
            if hi == lo:
                raise ValueError(f"{name}: constant image (all values {lo}); nothing to learn")
            return a.astype(np.float32, copy=False), "float in [0, 1]: unchanged"
    flat = a.reshape(-1)
    step = max(1, flat.size // _PERCENTILE_SAMPLE)
    lo, hi = (float(v) for v in np.percentile(flat[::step], PERCENTILES))
    if not hi > lo:
        lo, hi = float(flat.min()), float(flat.max())  # a sparse image: fall back to min / max
        if not hi > lo:
            raise ValueError(f"{name}: constant image (all values {lo}); nothing to learn")
        how = f"{a.dtype}: min {lo:g} -> 0, max {hi:g} -> 1"
    else:
        how = (f"{a.dtype}: percentiles {PERCENTILES[0]:g} ({lo:g}) -> 0 and "
               f"{PERCENTILES[1]:g} ({hi:g}) -> 1, clipped")
    out = (a.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out), how


def _read_one(name: str, arr: Any, rgb: bool | None, max_planes: int) -> Stack:
    shape = tuple(int(s) for s in arr.shape)
    is_rgb = _guess_rgb(shape, rgb)
    plane_nd = 3 if is_rgb else 2
    if len(shape) < plane_nd:
        raise ValueError(
            f"{name}: shape {shape} is not an image; expected (..., Y, X) or, for colour, "
            "(..., Y, X, 3)"
        )
    lead = shape[: len(shape) - plane_nd]
    indices = list(np.ndindex(*lead)) if lead else [()]
    total = len(indices)
    if total == 0 or any(s == 0 for s in shape):
        raise ValueError(f"{name}: empty array {shape}")
    if total > max_planes:
        pick = np.linspace(0, total - 1, max_planes).round().astype(int)
        indices = [indices[i] for i in dict.fromkeys(pick.tolist())]
    raw = []
    for idx in indices:
        p = np.asarray(arr[idx])
        if is_rgb:
            p = p[..., :3]  # alpha carries no image content
        raw.append(p)
    data, how = normalise_stack(np.stack(raw), name=name)
    planes = [(idx, np.ascontiguousarray(data[i])) for i, idx in enumerate(indices)]
    info = {"name": name, "shape": list(shape), "dtype": str(np.dtype(arr.dtype)),
            "rgb": is_rgb, "planes_total": total, "planes_used": len(indices),
            "normalisation": how}
    return Stack(name, planes, is_rgb, info)


def read_sources(
    data: Any, *, rgb: bool | None = None, max_planes: int = MAX_PLANES, name: str = "data"
) -> list[Stack]:
    """Read and normalise every source of ``data`` (module docstring), one :class:`Stack` each.

    ``name`` names array sources (``name``, ``name#2``...); files keep their file names.

    Raises:
        ValueError: no data, an unreadable path, a non-image shape, or one of
            :func:`normalise_stack`'s.
    """
    if max_planes < 1:
        raise ValueError(f"max_planes must be >= 1, got {max_planes}")
    stacks = []
    expanded = [item for src in _sources(data) for item in _expand(src)]
    for k, (src_name, arr, src_rgb) in enumerate(expanded):
        label = src_name or (name if len(expanded) == 1 else f"{name}#{k + 1}")
        stacks.append(_read_one(label, arr, src_rgb if rgb is None else rgb, max_planes))
    return stacks


def fingerprint(stacks: Sequence[Stack]) -> str:
    """A short hash of the data (names, shapes and a sample of every used plane's values):
    the same data give the same run name and are recognised when a run is resumed."""
    h = hashlib.sha256()
    for s in stacks:
        h.update(repr((s.name, s.info.get("shape"), s.info.get("dtype"))).encode())
        for idx, p in s.planes:
            h.update(repr(idx).encode())
            h.update(np.ascontiguousarray(p[::7, ::7]).tobytes())
    return h.hexdigest()[:12]


# ------------------------------------------------------------------------------ splitting


def plane_name(stack: Stack, idx: tuple[int, ...]) -> str:
    return f"{stack.name}[{','.join(map(str, idx))}]" if idx else stack.name


def choose_val(
    candidates: list[tuple[int, int]],
    index_of: dict[tuple[int, int], tuple[int, ...]],
    val_fraction: float,
    seed: int,
    gap: int,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
    """(val, train, gap used) among ``candidates`` = (stack, plane position) pairs."""
    n = len(candidates)
    n_val = min(n - 1, max(1, round(val_fraction * n)))
    u = float(np.random.default_rng(seed).uniform())
    chosen = sorted({min(n - 1, int((k + u) * n / n_val)) for k in range(n_val)})
    val = [candidates[i] for i in chosen]

    def near(c: tuple[int, int], g: int) -> bool:
        return any(c[0] == v[0] and _distance(index_of[c], index_of[v]) <= g for v in val)

    for g in (gap, 0):
        train = [c for c in candidates if c not in val and not near(c, g)]
        if train:
            return val, train, g
    return val, [], 0


def _distance(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Chebyshev distance between two leading-axes indices (0 for 2-D sources)."""
    return max((abs(x - y) for x, y in zip(a, b)), default=0)


def split_axis(shape_yx: tuple[int, int], val_fraction: float,
                min_region: int = MIN_REGION) -> tuple[int, int]:
    """(axis, start of the validation region) for splitting one plane in two, each part at
    least ``min_region`` pixels along the split (longer) axis."""
    axis = 0 if shape_yx[0] >= shape_yx[1] else 1
    length = shape_yx[axis]
    if length < 2 * min_region:
        raise ValueError(
            f"a single image of {shape_yx[0]}×{shape_yx[1]} pixels is too small to split into "
            f"a training and a validation region (its longer side needs >= {2 * min_region} "
            "pixels); give a larger image or more images"
        )
    band = min(length - min_region, max(min_region, round(length * max(val_fraction, 0.2))))
    return axis, length - band


def region_name(name: str, axis: int, lo: int | None, hi: int | None) -> str:
    part = f"{'' if lo is None else lo}:{'' if hi is None else hi}"
    return f"{name}[{part}, :]" if axis == 0 else f"{name}[:, {part}]"


def usable_planes(planes: list[np.ndarray], min_std: float) -> list[bool]:
    return [float(p[::2, ::2].std()) >= min_std for p in planes]


def check_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")


# ------------------------------------------------------------------------------ one data set


@dataclass
class UserData:
    """The user's data as a :class:`Pool`, with what a model card says about it.

    ``sources``: per source :attr:`Stack.info`; ``split``: how validation was chosen and the
    plane names on each side; ``fingerprint``: :func:`fingerprint` of the data.
    """

    pool: Pool
    sources: list[dict[str, Any]]
    split: dict[str, Any]
    fingerprint: str

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary (sources, split) for run records and model cards."""
        return {"sources": self.sources, "split": self.split, "fingerprint": self.fingerprint}


def load_user_data(
    data: Any,
    *,
    rgb: bool | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    gap: int = 1,
    min_std: float = 0.005,
    max_planes: int = MAX_PLANES,
    name: str = "data",
) -> UserData:
    """Read ``data`` (module docstring) into a train / validation :class:`Pool`.

    Args:
        data: one source or a list (arrays, files, folders of TIFFs).
        rgb: force colour (True) or gray (False); None guesses per source.
        val_fraction: share of the usable planes held out (at least one plane).
        seed: picks the validation planes (same data and seed, same split).
        gap: planes this close to a validation plane of the same stack are not trained on.
        min_std: planes whose standard deviation (in [0, 1] units) is below this are unused.
        max_planes: planes per source at most (evenly spaced).
        name: name of array sources in plane names and cards (e.g. the layer's name).

    Raises:
        ValueError: unreadable data (see :func:`read_sources`), no usable plane, a single
            image too small to split.
    """
    check_fraction(val_fraction)
    stacks = read_sources(data, rgb=rgb, max_planes=max_planes, name=name)
    candidates, index_of, arrays = [], {}, {}
    for si, s in enumerate(stacks):
        ok = usable_planes([p for _, p in s.planes], min_std)
        for pi, (idx, p) in enumerate(s.planes):
            if ok[pi]:
                candidates.append((si, pi))
                index_of[(si, pi)] = idx
                arrays[(si, pi)] = p
    if not candidates:
        raise ValueError(
            "every plane of the data is (nearly) constant (standard deviation < "
            f"{min_std} after normalisation); nothing to learn from"
        )

    def plane(c: tuple[int, int]) -> Plane:
        s = stacks[c[0]]
        return Plane(plane_name(s, index_of[c]), MODALITY, arrays[c])

    if len(candidates) == 1:
        c = candidates[0]
        p = plane(c)
        axis, cut = split_axis(p.shape_yx, val_fraction)
        tr = p.data[:cut] if axis == 0 else p.data[:, :cut]
        va = p.data[cut:] if axis == 0 else p.data[:, cut:]
        train = [Plane(region_name(p.name, axis, None, cut), MODALITY, tr)]
        val = [Plane(region_name(p.name, axis, cut, None), MODALITY, va)]
        how = (f"one image split spatially: {'rows' if axis == 0 else 'columns'} {cut}: "
               "validation, the rest training")
        gap_used = 0
    else:
        val_c, train_c, gap_used = choose_val(candidates, index_of, val_fraction, seed, gap)
        train, val = [plane(c) for c in train_c], [plane(c) for c in val_c]
        how = (f"whole planes: {len(val)} of {len(candidates)} usable planes held out (evenly "
               f"spaced, seed {seed}); planes within {gap_used} of a validation plane of the "
               "same stack unused")
    split = {"how": how, "val_fraction": val_fraction, "seed": seed, "gap": gap_used,
             "train": [p.name for p in train], "val": [p.name for p in val],
             "unused_constant": sum(len(s.planes) for s in stacks) - len(candidates)}
    return UserData(Pool(train=train, val=val), [s.info for s in stacks], split,
                    fingerprint(stacks))
