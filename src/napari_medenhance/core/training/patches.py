"""Training planes and random patches from them.

A :class:`Plane` is one 2-D image of the training pool: grayscale ``Y×X`` or RGB ``Y×X×3``,
float32 in [0, 1]. :class:`PatchSampler` cuts random square patches out of a list of planes for
the networks, which all take three channels: grayscale patches are replicated to three channels
(exactly what the inference engine does with a grayscale plane), so gray and colour planes mix
in one batch.

Empty background (CT padding outside the reconstruction circle, collimated X-ray borders, black
slide margins) teaches a restoration network nothing, so a patch is rejected and drawn again, a
bounded number of times, when it is mostly black (more than ``max_empty`` of its pixels at or
below ``empty_level``) or nearly constant (standard deviation below ``min_std``). Both tests are
needed: a patch that is 99 % padding with a sliver of body has a large standard deviation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

__all__ = ["LesionPatchSampler", "Plane", "Pool", "PatchSampler", "as_plane_array",
           "background_mask", "center_crop", "first_not_empty", "modality_factors"]


T = TypeVar("T")


def first_not_empty(draw: Callable[[], T], judged: Callable[[T], np.ndarray], *, tries: int,
                    min_std: float, max_empty: float, empty_level: float) -> T:
    """The first of up to ``tries`` draws whose judged image (``judged(draw)``: a patch, or the
    HQ side of a pair) is not empty background: standard deviation at least ``min_std`` and at
    most ``max_empty`` of its pixels at or below ``empty_level`` (colour: in every channel).
    When none is, the least empty one (then the most varied): a batch always fills."""
    best, best_score = None, (-2.0, -1.0)
    for _ in range(tries):
        cand = draw()
        img = judged(cand)
        lum = img if img.ndim == 2 else img.max(axis=2)
        empty = float(np.count_nonzero(lum <= empty_level)) / lum.size
        s = float(img.std())
        if s >= min_std and empty <= max_empty:
            return cand
        if (-empty, s) > best_score:
            best, best_score = cand, (-empty, s)
    assert best is not None
    return best


@dataclass(frozen=True)
class Plane:
    """One 2-D training / validation image.

    Attributes:
        name: where it comes from, e.g. ``"693_UNCR"`` or ``"nuclei.tif[z=30]"``.
        modality: e.g. ``"CT"``, ``"MR"``, ``"CR"``, ``"fluorescence"``, ``"colour"``.
        data: float32 ``Y×X`` (gray) or ``Y×X×3`` (RGB), values in [0, 1].
    """

    name: str
    modality: str
    data: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", as_plane_array(self.data, self.name))

    @property
    def rgb(self) -> bool:
        """True for a ``Y×X×3`` colour plane."""
        return self.data.ndim == 3

    @property
    def shape_yx(self) -> tuple[int, int]:
        return int(self.data.shape[0]), int(self.data.shape[1])


@dataclass(frozen=True)
class Pool:
    """A fixed train / validation split of planes (never the same image in both)."""

    train: list[Plane]
    val: list[Plane]


def as_plane_array(data: np.ndarray, name: str = "plane") -> np.ndarray:
    """Check a plane: float32 ``Y×X`` or ``Y×X×3`` with finite values in [0, 1] (returned as is,
    or converted to float32 C-contiguous).

    Raises:
        ValueError: wrong shape, non-finite values or values outside [0, 1].
    """
    a = np.ascontiguousarray(data, dtype=np.float32)
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"{name}: a plane must be Y×X or Y×X×3, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: empty plane {a.shape}")
    lo, hi = float(a.min()), float(a.max())
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name}: plane values must be finite and within [0, 1], got [{lo}, {hi}]; "
            "normalise it first (e.g. robust percentiles, then clip)"
        )
    return a


def center_crop(data: np.ndarray, size: int) -> np.ndarray:
    """The central ``min(Y, size) × min(X, size)`` window of a ``Y×X[×C]`` array (a view)."""
    h, w = data.shape[:2]
    ch, cw = min(h, size), min(w, size)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return data[y0 : y0 + ch, x0 : x0 + cw]


def modality_factors(planes: Sequence[Plane], weights: Mapping[str, float],
                      known: set[str]) -> np.ndarray:
    """Per plane, its modality's weight in ``weights`` (1 when not named), validated against
    the ``known`` modalities (those of every plane given, usable at this patch size or not)."""
    unknown = sorted(set(weights) - known)
    if unknown:
        raise ValueError(f"modality_weights names {', '.join(map(repr, unknown))}, which no "
                         f"plane has; modalities: {', '.join(sorted(known))}")
    bad = {m: w for m, w in weights.items() if not (np.isfinite(w) and w >= 0)}
    if bad:
        raise ValueError(f"modality_weights must be finite and >= 0, got {bad}")
    factors = np.array([float(weights.get(p.modality, 1.0)) for p in planes])
    if not factors.any():
        raise ValueError("modality_weights leave no modality to draw from (all weights 0)")
    return factors


class PatchSampler:
    """Random ``patch × patch`` windows from a list of planes, avoiding empty background.

    Args:
        planes: the planes to draw from. Planes smaller than ``patch`` in Y or X are skipped.
        patch: patch edge in pixels.
        balance: ``"modality"`` (default): every modality is drawn equally often, and within
            a modality a plane in proportion to its area, so one large chest X-ray does not
            outweigh a CT slice ten-fold; ``"area"``: planes in proportion to their area
            (every pixel of the pool equally likely).
        min_std: a candidate whose standard deviation (over all pixels and channels, [0, 1]
            units) is below this is rejected. The default 0.005 (≈ 1.3 / 255) drops constant
            padding and blank margins but keeps dim, noisy backgrounds (fluorescence, air in
            CT), which a denoiser must also learn.
        empty_level, max_empty: a pixel is empty when all its channels are <= ``empty_level``
            (default 1/255); a candidate with more than ``max_empty`` (default 0.75) empty
            pixels is rejected. Patches on the edge of the field of view are kept (they teach
            the network what a sharp border looks like) as long as a quarter is content.
        max_tries: candidates drawn per patch; when all are rejected the one with the fewest
            empty pixels (then the largest standard deviation) is used, so sampling always
            ends.
        augment: apply one of the 8 flips / 90° rotations (the dihedral group) per patch.
        modality_weights: ``{modality: weight}``; a plane's chance is multiplied by its
            modality's weight (1 for modalities not named), so with ``balance="modality"`` a
            modality of weight 2 is drawn twice as often as one of weight 1. For a run that
            must gain where its validation trails (say radiology) more than where it leads.

    Raises:
        ValueError: no plane is at least ``patch`` pixels in both Y and X; a weight that is
            negative or not finite, or names a modality that no plane has; all
            weights of the usable planes zero.
    """

    def __init__(
        self,
        planes: Sequence[Plane],
        patch: int,
        *,
        balance: str = "modality",
        min_std: float = 0.005,
        empty_level: float = 1.0 / 255.0,
        max_empty: float = 0.75,
        max_tries: int = 20,
        augment: bool = True,
        modality_weights: Mapping[str, float] | None = None,
    ) -> None:
        if patch < 1:
            raise ValueError(f"patch must be >= 1, got {patch}")
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        self.patch = int(patch)
        self.min_std = float(min_std)
        self.empty_level = float(empty_level)
        self.max_empty = float(max_empty)
        self.max_tries = int(max_tries)
        self.augment = bool(augment)
        self.planes = [p for p in planes if min(p.shape_yx) >= self.patch]
        if not self.planes:
            sizes = ", ".join(f"{p.name} {p.shape_yx}" for p in planes[:5]) or "no planes"
            raise ValueError(
                f"no plane is at least {patch}×{patch} pixels ({sizes}); use a smaller patch"
            )
        if balance not in ("modality", "area"):
            raise ValueError(f"balance must be 'modality' or 'area', got {balance!r}")
        area = np.array([p.shape_yx[0] * p.shape_yx[1] for p in self.planes], dtype=np.float64)
        if balance == "modality":
            mods = [p.modality for p in self.planes]
            per_mod = {m: area[[i for i, q in enumerate(mods) if q == m]].sum() for m in mods}
            area = area / np.array([per_mod[m] for m in mods])
        if modality_weights:
            area = area * modality_factors(self.planes, modality_weights,
                                            known={p.modality for p in planes})
        self._p = area / area.sum()

    def _candidate(self, rng: np.random.Generator) -> tuple[np.ndarray, Plane, tuple[int, int]]:
        plane = self.planes[int(rng.choice(len(self.planes), p=self._p))]
        h, w = plane.shape_yx
        y = int(rng.integers(0, h - self.patch + 1))
        x = int(rng.integers(0, w - self.patch + 1))
        return plane.data[y : y + self.patch, x : x + self.patch], plane, (y, x)

    def sample_one(self, rng: np.random.Generator) -> np.ndarray:
        """One patch, ``patch×patch`` (gray) or ``patch×patch×3`` (RGB), float32 [0, 1] (may be
        a view into the plane: copy before writing to it)."""
        return self.sample_with_plane(rng)[0]

    def sample_with_plane(self, rng: np.random.Generator) -> tuple[np.ndarray, Plane]:
        """:meth:`sample_one` and the plane the patch was cut from (same random stream)."""
        return self.sample_with_origin(rng)[:2]

    def sample_with_origin(
        self, rng: np.random.Generator
    ) -> tuple[np.ndarray, Plane, tuple[int, int]]:
        """:meth:`sample_with_plane` and the patch's top-left corner ``(y, x)`` in its plane."""
        return first_not_empty(lambda: self._candidate(rng), lambda c: c[0],
                               tries=self.max_tries, min_std=self.min_std,
                               max_empty=self.max_empty, empty_level=self.empty_level)

    def sample(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """A batch of augmented patches.

        Returns:
            ``(patches, is_gray)``: float32 ``batch×3×patch×patch`` in [0, 1] (gray patches
            replicated to three identical channels) and a bool ``batch`` array marking them.
        """
        p = self.patch
        out = np.empty((batch, 3, p, p), dtype=np.float32)
        gray = np.zeros(batch, dtype=bool)
        for i in range(batch):
            patch = self.sample_one(rng)
            if self.augment:
                k = int(rng.integers(8))
                patch = np.rot90(patch, k % 4, axes=(0, 1))
                if k >= 4:
                    patch = patch[:, ::-1]
            if patch.ndim == 2:
                out[i] = patch[None]
                gray[i] = True
            else:
                out[i] = patch.transpose(2, 0, 1)
        return out, gray


# --------------------------------------------------------------------------------------------
# lesion-focused sampling (super-resolution; Zhu, Yang and Lio, ISBI 2019)


class LesionPatchSampler:
    """Lesion- or structure-centred ``patch``² windows, never mostly background (the SR
    recipe's module docstring, ``recipes.sr``).

    Args:
        planes: float32 [0, 1] planes (``Y×X`` or ``Y×X×3``).
        patch: edge of the patch that must not be mostly background (HR pixels).
        margin: extra pixels around the patch in the returned window (its context for the
            downsampling); the window, ``patch + 2·margin`` per side, lies inside the plane.
        masks: ``{plane name: Y×X array}``, non-zero = lesion. Planes with a mask get patches
            centred on lesion pixels; the others (or a mask none of whose pixels can centre a
            valid patch) on structure.
        background_level: smoothed intensity at or below which a pixel is background (colour:
            also at or above ``1 − background_level`` in every channel, the empty slide).
        max_background: the largest background fraction a patch may have (0.5: never mostly
            background).
        structure_quantile: without a mask, centres are pixels whose gradient magnitude is at
            least this quantile of the plane's foreground gradients, drawn in proportion to it.
        balance: ``"modality"``: every modality equally often, planes within one in proportion
            to their area; ``"area"``: planes in proportion to their area alone.
        smooth_share: the share of draws centred anywhere that is not mostly background,
            uniformly, smooth tissue included, instead of on structure or lesion: a network
            that only ever sees edges learns to add texture where there should be none.

    Raises:
        ValueError: no plane can hold a window, or no plane has a valid centre.
    """

    def __init__(
        self,
        planes: Sequence[Plane],
        patch: int,
        *,
        margin: int = 0,
        masks: Mapping[str, np.ndarray] | None = None,
        background_level: float = 0.02,
        max_background: float = 0.5,
        structure_quantile: float = 0.75,
        balance: str = "modality",
        smooth_share: float = 0.0,
    ) -> None:
        from scipy.ndimage import gaussian_gradient_magnitude

        if patch < 1 or margin < 0:
            raise ValueError(f"patch must be >= 1 and margin >= 0; got patch={patch}, margin={margin}")
        if not 0.0 <= max_background < 1.0:
            raise ValueError(f"max_background must be in [0, 1); got {max_background}")
        if not 0.0 <= smooth_share <= 1.0:
            raise ValueError(f"smooth_share must be in [0, 1]; got {smooth_share}")
        self.smooth_share = float(smooth_share)
        if balance not in ("modality", "area"):
            raise ValueError(f"balance must be 'modality' or 'area'; got {balance!r}")
        masks = dict(masks or {})
        unknown = sorted(set(masks) - {p.name for p in planes})
        if unknown:
            raise ValueError(f"masks given for unknown planes {unknown}; keys must be plane names")
        self.patch, self.margin = int(patch), int(margin)
        self.max_background = float(max_background)
        self.window = self.patch + 2 * self.margin
        # Candidate centres on a grid (memory stays bounded on 2000² planes); a draw jitters
        # within the grid cell and falls back to the grid point when the jittered patch fails.
        self.stride = max(1, self.patch // 8)
        self.planes: list[Plane] = []
        self.sources: list[str] = []  # "mask" or "structure", per kept plane
        #: Names of planes that cannot hold a valid patch (too small, or all background).
        self.skipped: list[str] = []
        self._ii: list[np.ndarray] = []
        self._cand: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._anywhere: list[tuple[np.ndarray, np.ndarray]] = []  # for smooth_share draws
        p, m = self.patch, self.margin
        for plane in planes:
            h, w = plane.shape_yx
            if min(h, w) < self.window:
                self.skipped.append(plane.name)
                continue
            data = plane.data
            bg = background_mask(plane, background_level)
            lum = data.mean(axis=2) if plane.rgb else data
            ii = np.zeros((h + 1, w + 1), dtype=np.int64)
            ii[1:, 1:] = bg.cumsum(0).cumsum(1)
            # Grid of centres whose patch top-left (cy - p//2) keeps the whole window inside.
            ys = np.arange(m + p // 2, h - m - (p - p // 2) + 1, self.stride)
            xs = np.arange(m + p // 2, w - m - (p - p // 2) + 1, self.stride)
            gy, gx = np.meshgrid(ys, xs, indexing="ij")
            frac = _box_fraction(ii, gy - p // 2, gx - p // 2, p)
            ok = frac <= self.max_background
            source, weight = "structure", None
            mask = masks.get(plane.name)
            if mask is not None:
                mask = np.asarray(mask)
                if mask.shape != (h, w):
                    raise ValueError(
                        f"mask of {plane.name} is shaped {mask.shape}; the plane is {(h, w)}"
                    )
                # A grid cell counts when any lesion pixel lies in it (small lesions between
                # grid points are not lost); the centre is then that cell's grid point.
                hit = _any_in_cells(mask != 0, ys, xs, self.stride)
                if np.any(hit & ok):
                    source, weight = "mask", (hit & ok).astype(np.float64)
            if weight is None:
                grad = gaussian_gradient_magnitude(lum.astype(np.float32), 1.0)
                fg = grad[~bg]
                if fg.size == 0:
                    self.skipped.append(plane.name)
                    continue
                thr = float(np.quantile(fg, structure_quantile))
                g = grad[gy, gx].astype(np.float64)
                weight = np.where(ok & (g >= thr) & (g > 0), g, 0.0)
            keep = weight > 0
            if not keep.any():
                self.skipped.append(plane.name)
                continue
            self.planes.append(plane)
            self.sources.append(source)
            self._ii.append(ii)
            self._cand.append((gy[keep].astype(np.int32), gx[keep].astype(np.int32),
                               np.cumsum(weight[keep])))
            self._anywhere.append((gy[ok].astype(np.int32), gx[ok].astype(np.int32)))
        if not self.planes:
            raise ValueError(
                f"no plane has a {self.window}×{self.window} window whose central {p}×{p} patch "
                f"is at most {self.max_background:.0%} background; use a smaller patch or a "
                "lower background_level"
            )
        # Area, not the number of candidates: a plane with a small lesion is drawn as often as
        # a plane of the same size without one (its mask says where, not how often).
        n = np.array([pl.shape_yx[0] * pl.shape_yx[1] for pl in self.planes], dtype=np.float64)
        if balance == "modality":
            mods = [pl.modality for pl in self.planes]
            per_mod = {md: n[[i for i, q in enumerate(mods) if q == md]].sum() for md in mods}
            n = n / np.array([per_mod[md] for md in mods])
        self._p = n / n.sum()

    def draw(self, rng: np.random.Generator) -> tuple[int, int, int]:
        """``(plane index, y0, x0)``: top-left of a valid patch in ``self.planes[index]``."""
        i = int(rng.choice(len(self.planes), p=self._p))
        # The share is tested only when set, so runs without it draw the same sequence as before.
        if self.smooth_share > 0 and rng.random() < self.smooth_share:
            ys, xs = self._anywhere[i]
            k = int(rng.integers(len(ys)))
        else:
            ys, xs, cum = self._cand[i]
            k = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
            k = min(k, len(ys) - 1)
        p, m, s = self.patch, self.margin, self.stride
        cy, cx = int(ys[k]), int(xs[k])
        y0, x0 = cy - p // 2, cx - p // 2
        if s > 1:
            jy, jx = (int(v) for v in rng.integers(-(s // 2), s - s // 2, size=2))
            h, w = self.planes[i].shape_yx
            ty, tx = y0 + jy, x0 + jx
            if (m <= ty <= h - m - p and m <= tx <= w - m - p
                    and self._frac(i, ty, tx) <= self.max_background):
                y0, x0 = ty, tx
        return i, y0, x0

    def _frac(self, i: int, y0: int, x0: int) -> float:
        return float(_box_fraction(self._ii[i], y0, x0, self.patch))

    def sample_one(self, rng: np.random.Generator) -> np.ndarray:
        """One window, ``(patch + 2·margin)²`` (× 3 for colour), float32 [0, 1]; a view into the
        plane (copy before writing)."""
        i, y0, x0 = self.draw(rng)
        m = self.margin
        return self.planes[i].data[y0 - m : y0 + self.patch + m, x0 - m : x0 + self.patch + m]


def background_mask(plane: Plane, level: float) -> np.ndarray:
    """Background mask of a plane: pixels at or below ``level``, raw or Gaussian-smoothed
    (σ = 2 px, so noisy air counts too); colour planes: dark, or near-white in every channel
    (the empty slide). The raw test makes the sampler's bound hold for raw pixels exactly."""
    from scipy.ndimage import gaussian_filter

    data = plane.data
    if plane.rgb:
        hi, lo = data.max(axis=2), data.min(axis=2)
        dark = (hi <= level) | (gaussian_filter(hi, 2.0) <= level)
        white = (lo >= 1.0 - level) | (gaussian_filter(lo, 2.0) >= 1.0 - level)
        return dark | white
    return (data <= level) | (gaussian_filter(data, 2.0) <= level)


def _box_fraction(ii: np.ndarray, y0: Any, x0: Any, size: int) -> Any:
    """Fraction of ones in the ``size``² boxes with top-left (y0, x0) of the integral image ii."""
    s = ii[y0 + size, x0 + size] - ii[y0, x0 + size] - ii[y0 + size, x0] + ii[y0, x0]
    return s / float(size * size)


def _any_in_cells(mask: np.ndarray, ys: np.ndarray, xs: np.ndarray, stride: int) -> np.ndarray:
    """For each grid point (ys[a], xs[b]): whether ``mask`` is set anywhere within ±stride/2."""
    h, w = mask.shape
    ii = np.zeros((h + 1, w + 1), dtype=np.int64)
    ii[1:, 1:] = mask.cumsum(0).cumsum(1)
    r0, r1 = stride // 2, stride - stride // 2
    y0 = np.clip(ys - r0, 0, h)[:, None]
    y1 = np.clip(ys + r1, 0, h)[:, None]
    x0 = np.clip(xs - r0, 0, w)[None, :]
    x1 = np.clip(xs + r1, 0, w)[None, :]
    return (ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]) > 0
