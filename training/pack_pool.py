"""Pack the training pool into one small file for a GPU machine that cannot fetch it.

    python training/pack_pool.py                      # runs/pool-pack.npz from pool.load_pool()
    python training/pack_pool.py --max-mb 6 --out runs/pool-pack.npz

A borrowed GPU machine (``gpu_run.py``, ``README.md``) has no network and no pydicom or nibabel,
and receives the working tree plus a few ignored files, 64 MiB in all. This script writes the
pool of ``pool.py`` into one git-ignored ``.npz`` under ``--max-mb`` (8 MB) and checks that the
files that travel (tracked and untracked-not-ignored files plus the pack) stay under 64 MiB
minus ``--margin-mb``.

What is kept
------------
* **Validation planes: all, whole**, so the GPU run reports validation numbers on the same
  split as the CPU runs (up to the quantisation below).
* **Training planes: every modality**, each given an equal share of the byte budget (a share a
  modality does not need goes to the others), shared equally by its sources (a source = the
  planes named ``<source>[...]``). A source over its share keeps evenly spaced planes of a
  volume, or one window of its largest plane with the most structure (mean gradient magnitude,
  at most half background), never narrower than ``--min-side`` pixels. Windows are named
  ``<plane>[y0:y1,x0:x1]``, so the SR recipe's per-volume min–max still groups them by source.

Quantisation: a plane is stored as integers ``q`` with ``x = q / levels``. ``levels`` is 255
when the plane is 8-bit data (exact); otherwise the smallest step between its values, so that
12-bit DICOM normalised to [0, 1] keeps each of its levels (error ≤ half a level) and
compresses like the 12-bit original, capped at 65535 (uint16; float sources lose < 1e-5).

Format: ``np.savez_compressed`` (a zip of ``.npy`` files, no pickle): ``manifest`` (a 0-d
unicode array of JSON: ``{"version", "train": [[name, modality, levels], ...], "val": [...]}``)
and ``train<i>`` / ``val<i>`` (uint8 or uint16, ``Y×X`` or ``Y×X×3``). :func:`load_pack`
reads it back as a :class:`~napari_medenhance.core.training.Pool` with numpy alone.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # the GPU machine has the source tree, not the package
    sys.path.insert(0, str(ROOT / "src"))

from napari_medenhance.core.training.patches import Plane, Pool  # noqa: E402

__all__ = ["PACK", "PackReport", "load_pack", "pack_pool", "quantise", "travelling_bytes"]

#: Default pack file (``runs/`` is git-ignored; the GPU procedure carries it).
PACK = ROOT / "runs" / "pool-pack.npz"
FORMAT_VERSION = 1
#: What the device tool sends at most: working tree plus carried paths.
TRAVEL_LIMIT = 64 * 2**20
#: A pixel is background at or below this (gray) / in every channel (colour), or colour at or
#: above 1 − this in every channel (an empty slide); windows are at most half background.
_BACKGROUND = 0.02


@dataclass
class PackReport:
    """What :func:`pack_pool` wrote: ``bytes`` of the file, planes and pixels per split, and
    for each training source what was kept (``{source: "all" | "k of n planes" | window}``)."""

    path: Path
    bytes: int
    planes: dict[str, int]
    pixels: dict[str, int]
    kept: dict[str, str]


# ------------------------------------------------------------------------------- reading


def load_pack(path: str | Path) -> Pool:
    """The pool stored in a pack: planes float32 in [0, 1] (``q / levels``), names and
    modalities as packed. Raises ValueError for a file that is not a pack of this version."""
    with np.load(Path(path), allow_pickle=False) as z:
        if "manifest" not in z.files:
            raise ValueError(f"{path}: not a pool pack (no manifest); make one with training/pack_pool.py")
        manifest = json.loads(str(z["manifest"]))
        if manifest.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: pack version {manifest.get('version')}, expected {FORMAT_VERSION}")
        splits = []
        for split in ("train", "val"):
            planes = []
            for i, (name, modality, levels) in enumerate(manifest[split]):
                q = z[f"{split}{i}"]
                data = q.astype(np.float32) / np.float32(levels)
                planes.append(Plane(name, modality, np.minimum(data, np.float32(1.0))))
            splits.append(planes)
    return Pool(*splits)


# ------------------------------------------------------------------------------- writing


def quantise(data: np.ndarray) -> tuple[np.ndarray, int]:
    """``(q, levels)`` with ``data ≈ q / levels``: uint8 for 8-bit data (exact), else uint16
    with ``levels`` = 1 / (the smallest common step between the plane's values), at most 65535.

    ``data``: float ``Y×X`` or ``Y×X×3`` in [0, 1]. The error is at most half a level.
    """
    a = np.asarray(data, dtype=np.float64)
    if np.abs(a * 255.0 - np.round(a * 255.0)).max() < 1e-3:
        return np.round(a * 255.0).astype(np.uint8), 255
    values = np.unique(a)
    steps = np.diff(values)
    steps = steps[steps > 1e-9]
    # The 5th percentile of the gaps, not the minimum: clipping to 0 / 1 puts the ends off the
    # grid of the source's integer levels.
    step = float(np.percentile(steps, 5)) if steps.size else 1.0
    levels = int(min(65535, max(255, math.ceil(1.0 / step - 1e-6))))
    q = np.round(a * levels)
    return q.astype(np.uint8 if levels <= 255 else np.uint16), levels


def _compressed_size(arrays: dict[str, np.ndarray]) -> int:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return len(buf.getvalue())


def _source(name: str) -> str:
    return name.split("[", 1)[0]


def _best_window(plane: Plane, h: int, w: int) -> tuple[int, int]:
    """Top-left of the ``h×w`` window of ``plane`` with the largest mean gradient magnitude
    among those at most half background (the least background one when none is)."""
    data = plane.data
    lum = data.mean(axis=2) if plane.rgb else data
    gy, gx = np.gradient(lum.astype(np.float32))
    grad = np.hypot(gy, gx)
    if plane.rgb:
        bg = (data.max(axis=2) <= _BACKGROUND) | (data.min(axis=2) >= 1.0 - _BACKGROUND)
    else:
        bg = data <= _BACKGROUND
    H, W = lum.shape

    def integral(a: np.ndarray) -> np.ndarray:
        ii = np.zeros((H + 1, W + 1), dtype=np.float64)
        ii[1:, 1:] = a.cumsum(0).cumsum(1)
        return ii

    ig, ib = integral(grad), integral(bg.astype(np.float64))
    stride = max(8, min(h, w) // 8)
    ys = np.unique(np.r_[np.arange(0, H - h + 1, stride), H - h])
    xs = np.unique(np.r_[np.arange(0, W - w + 1, stride), W - w])
    y0, x0 = np.meshgrid(ys, xs, indexing="ij")

    def box(ii: np.ndarray) -> np.ndarray:
        return (ii[y0 + h, x0 + w] - ii[y0, x0 + w] - ii[y0 + h, x0] + ii[y0, x0]) / (h * w)

    g, b = box(ig), box(ib)
    score = np.where(b <= 0.5, g, -b)  # any valid window beats every invalid one
    k = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(y0[k]), int(x0[k])


def _fill(needs: dict[str, float], budget: float) -> dict[str, float]:
    """Water-filling: equal shares of ``budget``; what one key does not need goes to the rest."""
    alloc, left = {}, float(budget)
    for i, (key, need) in enumerate(sorted(needs.items(), key=lambda kv: kv[1])):
        share = left / (len(needs) - i)
        alloc[key] = min(need, share)
        left -= alloc[key]
    return alloc


def _select(planes: Sequence[Plane], cost: dict[str, float], budget: float, min_side: int
            ) -> tuple[list[Plane], str]:
    """The planes of one source within ``budget`` bytes (``cost``: bytes per pixel of each)."""
    need = sum(cost[p.name] * p.shape_yx[0] * p.shape_yx[1] for p in planes)
    if need <= budget:
        return list(planes), "all"
    each = need / len(planes)
    if len(planes) > 1 and each <= budget:
        k = max(1, int(budget // each))
        idx = np.unique(np.round(np.linspace(0, len(planes) - 1, k + 2)[1:-1]).astype(int))
        return [planes[i] for i in idx], f"{len(idx)} of {len(planes)} planes"
    plane = max(planes, key=lambda p: p.shape_yx[0] * p.shape_yx[1]) if len(planes) == 1 \
        else planes[len(planes) // 2]
    H, W = plane.shape_yx
    area = budget / cost[plane.name]
    side = math.sqrt(area)
    h = int(min(H, max(min_side, side)))
    w = int(min(W, max(min_side, area / h)))
    h = int(min(H, max(min_side, area / w)))
    y0, x0 = _best_window(plane, h, w)
    name = f"{plane.name}[{y0}:{y0 + h},{x0}:{x0 + w}]"
    return [Plane(name, plane.modality, plane.data[y0 : y0 + h, x0 : x0 + w])], f"window {name}"


def pack_pool(
    pool: Pool,
    path: str | Path = PACK,
    *,
    max_bytes: int = 8_000_000,
    min_side: int = 256,
) -> PackReport:
    """Write ``pool`` as a pack of at most ``max_bytes`` bytes (module docstring).

    Args:
        pool: the planes (float32 [0, 1]).
        path: the ``.npz`` to write (atomically; its folder is created).
        max_bytes: size limit of the file; training planes are cut to fit, validation planes
            never are.
        min_side: training windows are at least this many pixels per side where the plane is
            (the GPU recipes draw 128² patches, SR 152² windows with their margin).

    Raises:
        ValueError: the validation planes alone take more than half of ``max_bytes``, or the
            pack cannot be made to fit.
    """
    path = Path(path)
    quant = {s: [quantise(p.data) for p in getattr(pool, s)] for s in ("train", "val")}
    val_arrays = {f"val{i}": q for i, (q, _) in enumerate(quant["val"])}
    val_bytes = _compressed_size(val_arrays)
    if val_bytes > max_bytes / 2:
        raise ValueError(f"the validation planes alone take {val_bytes / 1e6:.1f} MB of the "
                         f"{max_bytes / 1e6:.1f} MB allowed; raise --max-mb")
    # Bytes per pixel of each training plane once compressed (measured per plane).
    cost = {}
    for p, (q, _) in zip(pool.train, quant["train"]):
        cost[p.name] = _compressed_size({"x": q}) / (p.shape_yx[0] * p.shape_yx[1])
    by_mod: dict[str, dict[str, list[Plane]]] = {}
    for p in pool.train:
        by_mod.setdefault(p.modality, {}).setdefault(_source(p.name), []).append(p)
    budget = 0.97 * max_bytes - val_bytes - 4096  # zip directory and manifest
    for _ in range(8):
        mod_need = {m: sum(cost[p.name] * p.shape_yx[0] * p.shape_yx[1] for ps in srcs.values()
                           for p in ps) for m, srcs in by_mod.items()}
        mod_alloc = _fill(mod_need, budget)
        train: list[Plane] = []
        kept: dict[str, str] = {}
        for m, srcs in by_mod.items():
            src_need = {s: sum(cost[p.name] * p.shape_yx[0] * p.shape_yx[1] for p in ps)
                        for s, ps in srcs.items()}
            for s, alloc in _fill(src_need, mod_alloc[m]).items():
                planes, what = _select(srcs[s], cost, alloc, min_side)
                train += planes
                kept[f"{m}:{s}"] = what
        arrays = dict(val_arrays)
        levels = {}
        for i, p in enumerate(train):
            q, lv = quantise(p.data)
            arrays[f"train{i}"], levels[i] = q, lv
        manifest = {
            "version": FORMAT_VERSION,
            "train": [[p.name, p.modality, levels[i]] for i, p in enumerate(train)],
            "val": [[p.name, p.modality, lv] for p, (_, lv) in zip(pool.val, quant["val"])],
        }
        arrays["manifest"] = np.array(json.dumps(manifest))
        size = _compressed_size(arrays)
        if size <= max_bytes:
            break
        budget *= 0.97 * max_bytes / size
    else:
        raise ValueError(f"could not fit the pool in {max_bytes} bytes (last try {size})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        np.savez_compressed(f, **arrays)
    tmp.replace(path)
    return PackReport(
        path=path, bytes=path.stat().st_size,
        planes={"train": len(train), "val": len(pool.val)},
        pixels={"train": sum(p.shape_yx[0] * p.shape_yx[1] for p in train),
                "val": sum(p.shape_yx[0] * p.shape_yx[1] for p in pool.val)},
        kept=kept,
    )


# ------------------------------------------------------------------------ travel budget


def travelling_bytes(root: Path = ROOT) -> int:
    """Bytes of what the device tool sends without ``carry``: tracked files and untracked
    files that git does not ignore (``git ls-files --cached --others --exclude-standard``)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, check=True, capture_output=True,
    ).stdout
    total = 0
    for name in {n for n in out.decode().split("\0") if n}:
        p = root / name
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=PACK, help="pack file (keep it in a git-ignored folder)")
    p.add_argument("--max-mb", type=float, default=8.0, help="size limit of the pack (MB, 10^6 bytes)")
    p.add_argument("--min-side", type=int, default=256, help="smallest side of a training window")
    p.add_argument("--margin-mb", type=float, default=2.0,
                   help="what must stay free of the 64 MiB the device tool sends (MiB)")
    args = p.parse_args(argv)
    out = args.out.resolve()
    ignored = out.is_relative_to(ROOT) and subprocess.run(
        ["git", "check-ignore", "-q", str(out)], cwd=ROOT).returncode == 0
    if not ignored:
        print(f"error: {args.out} must be a git-ignored path inside the repository (it is carried "
              "from there, and must not travel twice or be committed); put it under runs/",
              file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pool import load_pool  # only here: it needs the data cache (and pydicom to refill it)

    pool = load_pool()
    report = pack_pool(pool, args.out, max_bytes=int(args.max_mb * 1e6), min_side=args.min_side)
    tree = travelling_bytes()
    total = tree + report.bytes
    limit = TRAVEL_LIMIT - int(args.margin_mb * 2**20)
    print(f"wrote {report.path} ({report.bytes / 1e6:.2f} MB): {report.planes['train']} train planes "
          f"({report.pixels['train'] / 1e6:.2f} Mpx), {report.planes['val']} val planes "
          f"({report.pixels['val'] / 1e6:.2f} Mpx, whole)")
    for source, what in report.kept.items():
        print(f"  {source:40s} {what}")
    print(f"travels: working tree {tree / 2**20:.1f} MiB + pack {report.bytes / 2**20:.1f} MiB = "
          f"{total / 2**20:.1f} MiB of {TRAVEL_LIMIT / 2**20:.0f} MiB "
          f"({(TRAVEL_LIMIT - total) / 2**20:.1f} MiB free, margin {args.margin_mb:g} MiB)")
    if total > limit:
        print("error: too much to send; lower --max-mb or move files out of the tree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
