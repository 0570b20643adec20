"""Real low-/high-quality pairs of the user's images (paired fine-tuning): aligned LQ / HQ
stacks read, normalised and split with the rules of :mod:`.user_data` (one normalisation per
stack, LQ and HQ independently; whole validation planes, or one image split spatially), and
the sampler that cuts the same window from both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .patches import Plane, Pool, as_plane_array, first_not_empty
from .user_data import (
    MAX_PLANES,
    MIN_REGION,
    MODALITY,
    check_fraction,
    choose_val,
    fingerprint,
    plane_name,
    read_sources,
    region_name,
    split_axis,
    usable_planes,
)

__all__ = ["PairedData", "PairedPatchSampler", "PairedPool", "PlanePair", "center_pair",
           "check_pair_shapes", "load_paired_data"]


@dataclass(frozen=True)
class PlanePair:
    """An aligned low-quality / high-quality pair of 2-D planes.

    Attributes:
        name, modality: as :class:`~.patches.Plane`'s.
        lq: float32 [0, 1], ``y×x`` or ``y×x×3``.
        hq: float32 [0, 1], ``(y·scale)×(x·scale)[×3]``: HQ pixel ``(Y, X)`` covers LQ pixel
            ``(Y // scale, X // scale)``.
        scale: HQ pixels per LQ pixel along Y and X (1 for denoising and enhancement).
    """

    name: str
    modality: str
    lq: np.ndarray = field(repr=False)
    hq: np.ndarray = field(repr=False)
    scale: int = 1

    def __post_init__(self) -> None:
        lq = as_plane_array(self.lq, f"{self.name} (LQ)")
        hq = as_plane_array(self.hq, f"{self.name} (HQ)")
        if lq.ndim != hq.ndim:
            raise ValueError(f"{self.name}: LQ is {'RGB' if lq.ndim == 3 else 'gray'} but HQ is "
                             f"{'RGB' if hq.ndim == 3 else 'gray'}; both must be the same kind")
        want = (lq.shape[0] * self.scale, lq.shape[1] * self.scale)
        if hq.shape[:2] != want:
            raise ValueError(f"{self.name}: LQ plane {lq.shape[:2]} needs an HQ plane of {want} "
                             f"(×{self.scale}); got {hq.shape[:2]}")
        object.__setattr__(self, "lq", lq)
        object.__setattr__(self, "hq", hq)

    @property
    def rgb(self) -> bool:
        return self.hq.ndim == 3


@dataclass(frozen=True)
class PairedPool:
    """A fixed train / validation split of aligned pairs (never the same region in both)."""

    train: list[PlanePair]
    val: list[PlanePair]
    scale: int = 1

    def hq_pool(self) -> Pool:
        """The HQ planes alone, as a :class:`Pool` (what a task recipe is built on)."""
        return Pool(train=[Plane(p.name, p.modality, p.hq) for p in self.train],
                    val=[Plane(p.name, p.modality, p.hq) for p in self.val])


@dataclass
class PairedData:
    """Paired user data as a :class:`PairedPool`, with card information (as :class:`UserData`)."""

    pool: PairedPool
    sources: list[dict[str, Any]]
    split: dict[str, Any]
    fingerprint: str

    def describe(self) -> dict[str, Any]:
        return {"sources": self.sources, "split": self.split, "fingerprint": self.fingerprint,
                "scale": self.pool.scale}


def check_pair_shapes(lq_shape: Sequence[int], hq_shape: Sequence[int], scale: int, *,
                      lq_name: str = "LQ", hq_name: str = "HQ", rgb: bool = False) -> None:
    """Refuse LQ / HQ stacks that are not aligned: same leading axes (and colour axis), and
    HQ ``Y×X`` = ``scale`` × LQ ``Y×X``.

    Raises:
        ValueError: naming both shapes and the shape the HQ should have.
    """
    lq_shape, hq_shape = tuple(int(s) for s in lq_shape), tuple(int(s) for s in hq_shape)
    k = 3 if rgb else 2
    want = list(lq_shape)
    if len(want) >= k:
        want[len(want) - k] *= scale
        want[len(want) - k + 1] *= scale
    if len(lq_shape) != len(hq_shape) or tuple(want) != hq_shape:
        rule = ("the same shape" if scale == 1
                else f"HQ {scale}× the LQ in Y and X, other axes equal")
        raise ValueError(
            f"paired data must be aligned: {lq_name} has shape {lq_shape} and {hq_name} has "
            f"shape {hq_shape}; they need {rule} (expected HQ {tuple(want)}). Crop or resample "
            "one of them, or train in 'simulated' mode on the HQ data alone"
        )


def load_paired_data(
    lq: Any,
    hq: Any,
    *,
    scale: int = 1,
    rgb: bool | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    gap: int = 1,
    min_std: float = 0.005,
    max_planes: int = MAX_PLANES,
    lq_name: str = "LQ",
    hq_name: str = "HQ",
) -> PairedData:
    """Read aligned LQ / HQ data into a :class:`PairedPool` (same split rules as
    :func:`load_user_data`, decided on the HQ planes; a single pair is split spatially at the
    same place in both).

    ``lq`` and ``hq`` are each one source or a list with the same number of sources (a folder
    counts its TIFFs, matched by sorted name); source *k* of one must be aligned with source *k*
    of the other (:func:`check_pair_shapes`).

    Raises:
        ValueError: different numbers of sources, misaligned shapes (naming both), anything
            :func:`load_user_data` refuses.
    """
    check_fraction(val_fraction)
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    lq_stacks = read_sources(lq, rgb=rgb, max_planes=max_planes, name=lq_name)
    hq_stacks = read_sources(hq, rgb=rgb, max_planes=max_planes, name=hq_name)
    if len(lq_stacks) != len(hq_stacks):
        raise ValueError(
            f"paired data need as many LQ as HQ sources; got {len(lq_stacks)} LQ "
            f"({', '.join(s.name for s in lq_stacks)}) and {len(hq_stacks)} HQ "
            f"({', '.join(s.name for s in hq_stacks)})"
        )
    for a, b in zip(lq_stacks, hq_stacks):
        if a.rgb != b.rgb:
            raise ValueError(f"{a.name} is {'RGB' if a.rgb else 'gray'} but {b.name} is "
                             f"{'RGB' if b.rgb else 'gray'}; paired data must be the same kind")
        check_pair_shapes(a.info["shape"], b.info["shape"], scale,
                          lq_name=f"LQ {a.name!r}", hq_name=f"HQ {b.name!r}", rgb=a.rgb)
    candidates, index_of, pairs = [], {}, {}
    for si, (a, b) in enumerate(zip(lq_stacks, hq_stacks)):
        ok = usable_planes([p for _, p in b.planes], min_std)
        for pi, ((idx, lqp), (_, hqp)) in enumerate(zip(a.planes, b.planes)):
            if ok[pi]:
                candidates.append((si, pi))
                index_of[(si, pi)] = idx
                pairs[(si, pi)] = PlanePair(plane_name(b, idx), MODALITY, lqp, hqp, scale)
    if not candidates:
        raise ValueError(f"every HQ plane is (nearly) constant (standard deviation < {min_std} "
                         "after normalisation); nothing to learn from")
    if len(candidates) == 1:
        pair = pairs[candidates[0]]
        # Split in LQ pixels; the HQ regions (× scale) keep the usual minimum size.
        axis, cut = split_axis(pair.lq.shape[:2], val_fraction, max(2, MIN_REGION // scale))

        def part(a: np.ndarray, lo: int | None, hi: int | None) -> np.ndarray:
            return a[lo:hi] if axis == 0 else a[:, lo:hi]

        s = scale
        train = [PlanePair(region_name(pair.name, axis, None, cut * s), MODALITY,
                           part(pair.lq, None, cut), part(pair.hq, None, cut * s), s)]
        val = [PlanePair(region_name(pair.name, axis, cut * s, None), MODALITY,
                         part(pair.lq, cut, None), part(pair.hq, cut * s, None), s)]
        how = (f"one pair split spatially: LQ {'rows' if axis == 0 else 'columns'} {cut}: "
               "validation, the rest training")
        gap_used = 0
    else:
        val_c, train_c, gap_used = choose_val(candidates, index_of, val_fraction, seed, gap)
        train, val = [pairs[c] for c in train_c], [pairs[c] for c in val_c]
        how = (f"whole plane pairs: {len(val)} of {len(candidates)} held out (evenly spaced, "
               f"seed {seed}); planes within {gap_used} of a validation plane unused")
    sources = [{"lq": a.info, "hq": b.info} for a, b in zip(lq_stacks, hq_stacks)]
    split = {"how": how, "val_fraction": val_fraction, "seed": seed, "gap": gap_used,
             "train": [p.name for p in train], "val": [p.name for p in val]}
    return PairedData(PairedPool(train, val, scale), sources, split,
                      fingerprint([*lq_stacks, *hq_stacks]))


# ------------------------------------------------------------------------------ paired patches


class PairedPatchSampler:
    """Random aligned windows from plane pairs, avoiding empty background in the HQ window.

    Args:
        pairs: the training pairs (all with the same ``scale``).
        patch: HQ patch edge in pixels (a multiple of ``scale``); the LQ patch is
            ``patch / scale``.
        min_std, empty_level, max_empty, max_tries: the background test of
            :class:`~.patches.PatchSampler`, applied to the HQ window.
        augment: the same one of the 8 flips / 90° rotations on both patches.

    Raises:
        ValueError: ``patch`` not a multiple of the scale, or no pair large enough.
    """

    def __init__(
        self,
        pairs: Sequence[PlanePair],
        patch: int,
        *,
        min_std: float = 0.005,
        empty_level: float = 1.0 / 255.0,
        max_empty: float = 0.75,
        max_tries: int = 20,
        augment: bool = True,
    ) -> None:
        scales = {p.scale for p in pairs}
        if len(scales) != 1:
            raise ValueError(f"all pairs must have one scale; got {sorted(scales)}")
        self.scale = scales.pop()
        if patch < self.scale or patch % self.scale:
            raise ValueError(f"patch must be a multiple of the scale {self.scale}; got {patch}")
        self.patch, self.lq_patch = int(patch), int(patch) // self.scale
        self.min_std, self.empty_level = float(min_std), float(empty_level)
        self.max_empty, self.max_tries = float(max_empty), max(1, int(max_tries))
        self.augment = bool(augment)
        self.pairs = [p for p in pairs if min(p.lq.shape[:2]) >= self.lq_patch]
        if not self.pairs:
            sizes = ", ".join(f"{p.name} {p.hq.shape[:2]}" for p in list(pairs)[:5]) or "no pairs"
            raise ValueError(f"no training plane is at least {patch}×{patch} pixels ({sizes}); "
                             "use a smaller patch")
        area = np.array([p.lq.shape[0] * p.lq.shape[1] for p in self.pairs], dtype=np.float64)
        self._p = area / area.sum()

    def _candidate(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pairs[int(rng.choice(len(self.pairs), p=self._p))]
        h, w = pair.lq.shape[:2]
        y = int(rng.integers(0, h - self.lq_patch + 1))
        x = int(rng.integers(0, w - self.lq_patch + 1))
        s, q = self.scale, self.lq_patch
        return pair.lq[y : y + q, x : x + q], pair.hq[y * s : (y + q) * s, x * s : (x + q) * s]

    def sample_one(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(lq, hq)`` windows (views into the planes) at the same place; the HQ side is
        judged for empty background, as :class:`~.patches.PatchSampler` judges a patch."""
        return first_not_empty(lambda: self._candidate(rng), lambda pair: pair[1],
                               tries=self.max_tries, min_std=self.min_std,
                               max_empty=self.max_empty, empty_level=self.empty_level)

    def sample(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(lq, hq)``: float32 ``batch×3×q×q`` and ``batch×3×p×p`` in [0, 1] (gray planes
        replicated to three channels, as the engine feeds the networks)."""
        q, p = self.lq_patch, self.patch
        lq_out = np.empty((batch, 3, q, q), dtype=np.float32)
        hq_out = np.empty((batch, 3, p, p), dtype=np.float32)
        for i in range(batch):
            lq, hq = self.sample_one(rng)
            if self.augment:
                k = int(rng.integers(8))
                lq, hq = np.rot90(lq, k % 4, axes=(0, 1)), np.rot90(hq, k % 4, axes=(0, 1))
                if k >= 4:
                    lq, hq = lq[:, ::-1], hq[:, ::-1]
            lq_out[i] = lq[None] if lq.ndim == 2 else lq.transpose(2, 0, 1)
            hq_out[i] = hq[None] if hq.ndim == 2 else hq.transpose(2, 0, 1)
        return lq_out, hq_out


def center_pair(pair: PlanePair, size: int, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The central window of a pair: HQ at most ``size`` pixels per side, LQ the same region;
    HQ sides are multiples of ``scale · multiple`` (so LQ sides are multiples of ``multiple``)."""
    s = pair.scale
    q = max(1, min(size, pair.hq.shape[0], pair.hq.shape[1]) // s)
    qy = min(q, pair.lq.shape[0]) // multiple * multiple or min(q, pair.lq.shape[0])
    qx = min(q, pair.lq.shape[1]) // multiple * multiple or min(q, pair.lq.shape[1])
    y0 = (pair.lq.shape[0] - qy) // 2
    x0 = (pair.lq.shape[1] - qx) // 2
    lq = pair.lq[y0 : y0 + qy, x0 : x0 + qx]
    hq = pair.hq[y0 * s : (y0 + qy) * s, x0 * s : (x0 + qx) * s]
    return np.ascontiguousarray(lq), np.ascontiguousarray(hq)
