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

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Plane", "Pool", "PatchSampler", "as_plane_array", "center_crop"]


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

    Raises:
        ValueError: no plane is at least ``patch`` pixels in both Y and X.
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
        self._p = area / area.sum()

    def _candidate(self, rng: np.random.Generator) -> tuple[np.ndarray, Plane]:
        plane = self.planes[int(rng.choice(len(self.planes), p=self._p))]
        h, w = plane.shape_yx
        y = int(rng.integers(0, h - self.patch + 1))
        x = int(rng.integers(0, w - self.patch + 1))
        return plane.data[y : y + self.patch, x : x + self.patch], plane

    def sample_one(self, rng: np.random.Generator) -> np.ndarray:
        """One patch, ``patch×patch`` (gray) or ``patch×patch×3`` (RGB), float32 [0, 1] (may be
        a view into the plane: copy before writing to it)."""
        return self.sample_with_plane(rng)[0]

    def sample_with_plane(self, rng: np.random.Generator) -> tuple[np.ndarray, Plane]:
        """:meth:`sample_one` and the plane the patch was cut from (same random stream)."""
        best, best_score = None, (-2.0, -1.0)
        for _ in range(self.max_tries):
            cand, plane = self._candidate(rng)
            lum = cand if cand.ndim == 2 else cand.max(axis=2)
            empty = float(np.count_nonzero(lum <= self.empty_level)) / lum.size
            s = float(cand.std())
            if s >= self.min_std and empty <= self.max_empty:
                return cand, plane
            if (-empty, s) > best_score:
                best, best_score = (cand, plane), (-empty, s)
        assert best is not None
        return best

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
