"""Perceptual enhancement with DPE: S M A Sharif, R. A. Naqvi, M. Biswas and W.-K. Loh, "Deep
Perceptual Enhancement for Medical Image Analysis" (IEEE JBHI; code
github.com/sharif-apu/DPE_JBHI), section II-C and Algorithm 1 for the training pairs.

Training pairs
--------------
clean = a random patch of a real plane in [0, 1] (:class:`~..patches.PatchSampler`, modality
balanced, empty background rejected, 8 flips / rotations); input = Algorithm 1 of the paper
(:mod:`napari_medenhance.core.degrade`: Gaussian noise σ ~ U(0, 10)/255, then contrast and
brightness factors ~ U(0.1, 0.8)). Both are mapped to DPE's [-1, 1].

* **Luminance check per training image.** The paper resized whole images to 128×128 training
  images and skipped those whose mean non-zero 8-bit Lab L is <= B_T = 100 (Algorithm 1: an
  image that is already of low quality makes the pair ambiguous). Here a training image is a
  patch, so the check applies to each patch: a dark patch is rejected and another one drawn,
  up to ``max_tries`` times; if all are dark the brightest is kept (and degraded: a batch
  always fills). :attr:`EnhanceRecipe.acceptance` estimates, per modality, the share of
  candidate patches that pass. Two checks (``luminance_check``):

  - ``"paper"`` (the library default): the fixed B_T for every patch, redrawn from any plane.
    A fixed L of 100 is the brightness of a photograph; fluorescence never reaches it (in the
    project's training pool 0 % of the fluorescence patches pass, 1–3 % of the ultrasound and
    phase-contrast ones, 23 % of the CR ones), so those modalities enter training only through
    their brightest regions, and their validation planes are left out (18 of the pool's 26).
  - ``"relative"``: the threshold of a patch is ``min(B_T, relative_luminance × L_image)``,
    where ``L_image`` is the same statistic (mean non-zero 8-bit Lab L) of the *whole plane the
    patch comes from*, and a rejected patch is redrawn from the same modality (every modality
    keeps its equal share of a batch). What the check rejects is then what is dark *for its
    own image* — noisy air around an MR head, the background between nuclei — while a
    fluorescence or clinical MR patch at its image's usual brightness is degraded like any
    other. The reference is the image, not the modality, because a modality is not one
    brightness: the pool's skull-stripped MR templates have patches at L ≈ 200, its clinical
    MR (MR2_UNCR, FatMRI) at L ≈ 30–75, and half the MR-wide typical value would still reject
    most clinical MR patches. Bright images are checked exactly as in the paper (B_T caps
    the threshold).
* **Stretched input** (``input_norm="stretch"``, the training script's default): the network
  sees the degraded image contrast-stretched by its whole image's ``input_percentiles``
  (training: of the patch's whole plane, estimated on a ≤ 256² grid of it; validation: of the
  crop), as the inference engine stretches a user's image (the weights header's
  ``input_percentiles``). Algorithm 1's contrast and brightness steps are affine with a
  positive slope and never clip, so the stretch cancels them: only the noise step is applied
  to the patch (and to the grid for the percentiles). ``"none"`` is the paper's raw input.
  The default percentiles are 0.1 / 99.9 %, the robust range every clean plane of the pool is
  normalised by: a stretch by them puts a degraded image back where its clean image was, up
  to the noise and the noise's effect on the tails, and leaves the network those to undo. A
  2 / 98 % stretch instead leaves a content-dependent gain (how much of an image lies in its
  outer 4 %), which the network must guess from a patch: on the validation split the 0.1 /
  99.9 % stretch alone scores 40.3 dB on CT, 35.6 on MR and 34.8 on colour, against 35.8,
  21.5 and 21.0 for the 2 / 98 % one (the ``stretch-0.1`` reference row of
  :meth:`EnhanceRecipe.baselines`). Weights trained on another pair record theirs.
  ``context_crop`` (default 0, off): for that share of the patches the percentiles come from
  a random window of the plane around the patch (side a log-uniform fraction from the patch's
  to the plane's) instead of the whole plane, since a user's image may be a crop of an
  acquisition whose clean intensities the whole of it set (as the validation split's windows
  are). Tried at 0.5 for 750 steps: it cost CT, MR and US 1.3–2.1 dB and did not move the
  empty phase-contrast window (``training/dpe_trials.md``).
* **Gray planes** are degraded as one channel (one noise field) and replicated to three, which
  is what the inference engine feeds the network for a gray image.

Objective (:mod:`..losses`)
---------------------------
``"full"``: L1 + regularized feature loss (VGG16 conv5_3 L1 × image-gradient L1) + 1e-4 ×
conditional GAN (swish discriminator judging the image concatenated with the degraded input,
noisy labels real ~ U(0.7, 1.2), fake ~ U(0, 0.3); the VGG features scaled by 1/127.5, see
:mod:`..losses`); ``"l1"``: L1 alone (the ablation); the
weights can also be set one by one. The discriminator is an extra module of the training loop
(:meth:`EnhanceRecipe.build_extras`), trained by its own Adam at the generator's rate.

Validation
----------
A fixed set: the central ≤ ``val_crop``² window of every validation plane that passes the
luminance check (the others are listed in :meth:`EnhanceRecipe.describe` and left out),
degraded ``val_draws`` times (8 by default) with Algorithm 1. Each plane's draws come from its
own generator, seeded by ``val_seed``, the plane's name and the draw's number: one draw of
Algorithm 1 spans a 64-fold range of contrast × brightness, so a single draw per plane moved
a modality's PSNR by up to 20 dB from one split to the next, and a shared generator redrew every
plane after any plane that was added or removed. With ``luminance_check="relative"`` a
crop passes when its L exceeds ``min(B_T, relative_luminance × the median L of its modality's
validation crops)``: the median crop of every modality always passes, so every modality is
validated, and only a crop far darker than its modality's others (a near-empty one) is left
out. Reported against the clean crop: PSNR and SSIM
(data range 1; output clipped to [0, 1] as the engine delivers it; gray outputs averaged back
to one channel), CIEDE2000 ΔE on colour planes, LaSSIM (level 3, or the deepest that fits) of
the output against the *degraded input* (structure kept, no reference needed), and the L1 error
(``loss``, [0, 1] units). Values are averaged over the planes of a modality, then over
modalities. Two classical baselines are computed once on the same inputs (:meth:`baselines`):
CLAHE (``skimage.exposure.equalize_adapthist`` with its defaults) and a percentile contrast
stretch (2 → 0, 98 → 1, clipped; one pair of percentiles over all channels of a colour plane, so
hues are kept).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ...degrade import (
    BRIGHTNESS_THRESHOLD,
    FACTOR_RANGE,
    SIGMA_MAX,
    apply_degradation,
    draw_degradation,
    mean_luminance,
)
from ...metrics import delta_e as _delta_e
from ...metrics import lassim as _lassim
from ...metrics import max_lassim_level
from ...metrics import psnr as _psnr
from ...metrics import ssim as _ssim
from ...nets import build as _build
from ...nets.discriminators import SwishDiscriminator
from ...nets import ARCHITECTURES
from ...nets.dpe import DPE
from ..losses import DPE_ADVERSARIAL_WEIGHT, FAKE_LABELS, FEATURE_SCALE, REAL_LABELS, PerceptualObjective
from ..patches import PatchSampler, Plane, Pool, center_crop
from .base import RecipeBase, evaluating, modality_mean, network_config, plane_ids

__all__ = ["EnhanceRecipe", "INPUT_PERCENTILES", "LOSS_PRESETS", "LUMINANCE_CHECKS", "clahe",
           "percentile_stretch"]

#: Named objectives: (feature weight, adversarial weight).
LOSS_PRESETS = {"full": (1.0, DPE_ADVERSARIAL_WEIGHT), "l1": (0.0, 0.0)}
#: The luminance checks of Algorithm 1 (module docstring): the paper's fixed B_T, or relative to
#: each image's own luminance.
LUMINANCE_CHECKS = ("paper", "relative")
#: What the network sees: the degraded image as it is (the paper), or contrast-stretched by its
#: own percentiles first (module docstring).
INPUT_NORMS = ("none", "stretch")
#: The percentiles of the classical stretch baseline (the ship gate's "2–98 % stretch").
STRETCH_PERCENTILES = (2.0, 98.0)
#: The percentiles a stretched input is normalised by (module docstring): the robust range the
#: clean planes themselves are normalised by, so that only the noise is left to undo.
INPUT_PERCENTILES = (0.1, 99.9)
#: A reference row of the baselines, not gated: the stretch by :data:`INPUT_PERCENTILES`.
WIDE_STRETCH = "stretch-0.1"
#: The LaSSIM level reported (the metric's default), lowered for crops too small for it.
LASSIM_LEVEL = 3


def _percentile_pair(pct: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in pct)
    if not 0.0 <= lo < hi <= 100.0:
        raise ValueError(f"input_percentiles must be a pair 0 <= lo < hi <= 100; got {tuple(pct)}")
    return lo, hi


def clahe(image: np.ndarray) -> np.ndarray:
    """CLAHE baseline: ``skimage.exposure.equalize_adapthist`` with its defaults, float32 [0, 1].

    Colour images: scikit-image equalises the V channel of HSV.
    """
    from skimage.exposure import equalize_adapthist

    return np.asarray(equalize_adapthist(image), dtype=np.float32)


def percentile_stretch(image: np.ndarray, lo: float = STRETCH_PERCENTILES[0],
                       hi: float = STRETCH_PERCENTILES[1]) -> np.ndarray:
    """Contrast-stretch baseline: percentile ``lo`` → 0, ``hi`` → 1, clipped; float32.

    One pair of percentiles over all channels of a colour image (a per-channel stretch would
    shift hues). A flat image is returned unchanged.
    """
    p0, p1 = np.percentile(image, (lo, hi))
    if not p1 > p0:
        return np.asarray(image, dtype=np.float32)
    return np.clip((image - p0) / (p1 - p0), 0.0, 1.0).astype(np.float32)


class EnhanceRecipe(RecipeBase):
    """DPE perceptual enhancement on a :class:`Pool` of real planes (module docstring).

    Args:
        pool: training planes (patches are drawn from them) and validation planes (fixed
            centre crops); never the same image in both.
        config: DPE constructor arguments overriding the paper's (e.g. ``{"widths": [8, 12,
            16, 20, 24]}`` for a tiny test network); checkpoints record the full config.
        loss: ``"full"`` (the paper's objective) or ``"l1"`` (the ablation: L1 only).
        feature_weight, adversarial_weight: override the preset's w_F and λ_G.
        feature_scale: s_F of the feature term (``losses`` module docstring: 1/127.5).
        features: the feature network of the regularized feature loss (default: the shipped
            ``VGG16Features(("conv5_3",))``); only loaded when w_F > 0.
        disc_config: :class:`SwishDiscriminator` arguments (e.g. smaller ``widths`` in tests);
            ``in_channels`` follows ``conditional``.
        conditional: the discriminator sees the image with the degraded input (paper's cGAN);
            False judges the image alone, as the authors' code does.
        brightness_threshold, sigma_max, factor_range: Algorithm 1's B_T (0–255 Lab L), σ_max
            (/255) and contrast / brightness factor range.
        luminance_check: ``"paper"`` (B_T for every patch and validation crop) or
            ``"relative"`` (``min(B_T, relative_luminance × L)`` with L the mean non-zero Lab
            L of the patch's whole plane, or the median of the modality's validation crops;
            module docstring).
        relative_luminance: the fraction of the ``"relative"`` check.
        max_tries: patches drawn per training image before the brightest dark one is kept.
        val_crop: validation planes are centre-cropped to at most this many pixels per side.
        val_seed: seed of the fixed validation degradation.
        val_draws: degradations per validation plane (rows are per plane and draw; a
            modality's value is the mean over its planes and their draws).
        min_std, max_empty: empty-background rejection of the patch sampler.
        acceptance_samples: patches per modality drawn (from a separate generator) to estimate
            :attr:`acceptance`; 0 skips the estimate.
        input_norm: what the network sees (:data:`INPUT_NORMS`, module docstring).
        input_percentiles: ``(lo, hi)`` in % of a stretched input (default
            :data:`INPUT_PERCENTILES`, 0.1 / 99.9); recorded in the weights header, which the
            engine reads.
        context_crop: share (0–1) of the training patches whose stretch is estimated on a
            random window around them instead of their whole plane (module docstring; 0).
        arch: the network trained (DPE by default): any registered enhance architecture
            (:func:`napari_medenhance.core.tasks.register_architecture`); one that reads and
            writes [0, 1] (no ``value_range = (-1, 1)``) is run through the mapping.
    """

    task = "enhance"
    primary_metric = "psnr"
    higher_is_better = True

    def __init__(
        self,
        pool: Pool,
        *,
        config: Mapping[str, Any] | None = None,
        loss: str = "full",
        feature_weight: float | None = None,
        adversarial_weight: float | None = None,
        feature_scale: float = FEATURE_SCALE,
        features: torch.nn.Module | None = None,
        disc_config: Mapping[str, Any] | None = None,
        conditional: bool = True,
        brightness_threshold: float = BRIGHTNESS_THRESHOLD,
        sigma_max: float = SIGMA_MAX,
        factor_range: tuple[float, float] = FACTOR_RANGE,
        luminance_check: str = "paper",
        relative_luminance: float = 0.5,
        max_tries: int = 20,
        val_crop: int = 256,
        val_seed: int = 2022,
        val_draws: int = 8,
        min_std: float = 0.005,
        max_empty: float = 0.75,
        acceptance_samples: int = 200,
        input_norm: str = "none",
        input_percentiles: Sequence[float] = INPUT_PERCENTILES,
        context_crop: float = 0.0,
        arch: str = "dpe",
    ) -> None:
        self._require_planes(pool)
        if loss not in LOSS_PRESETS:
            raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSS_PRESETS)}")
        ctor = DPE if str(arch).lower() == "dpe" else ARCHITECTURES.get(str(arch).lower())
        if ctor is None:
            raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
        self.arch = str(arch).lower()
        # The recipe works in DPE's [-1, 1]; a network of [0, 1] is run through the mapping.
        self._signed = tuple(getattr(ctor, "value_range", (0.0, 1.0))) == (-1.0, 1.0)
        self.config: dict[str, Any] = network_config(
            ctor, config, "DPE" if self.arch == "dpe" else self.arch)
        # in_channels follows ``conditional`` (SwishDiscriminator takes it: never unknown)
        self.disc_config: dict[str, Any] = network_config(
            SwishDiscriminator, disc_config, "discriminator",
            fixed={"in_channels": 6 if conditional else 3})
        self.loss_name = loss
        preset_f, preset_a = LOSS_PRESETS[loss]
        self.feature_weight = float(preset_f if feature_weight is None else feature_weight)
        self.adversarial_weight = float(preset_a if adversarial_weight is None else adversarial_weight)
        self.conditional = bool(conditional)
        if self.feature_weight > 0 and features is None:
            from ...nets.vgg import VGG16Features

            features = VGG16Features(("conv5_3",))
        self.objective_fn = PerceptualObjective(
            features if self.feature_weight > 0 else None,
            feature_weight=self.feature_weight,
            feature_scale=feature_scale,
            adversarial_weight=self.adversarial_weight,
        )
        self.pool = pool
        self.brightness_threshold = float(brightness_threshold)
        if luminance_check not in LUMINANCE_CHECKS:
            raise ValueError(f"unknown luminance_check {luminance_check!r}; choose one of "
                             f"{', '.join(LUMINANCE_CHECKS)}")
        if not 0.0 < relative_luminance <= 1.0:
            raise ValueError(f"relative_luminance must be in (0, 1], got {relative_luminance}")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown input_norm {input_norm!r}; choose one of "
                             f"{', '.join(INPUT_NORMS)}")
        self.input_norm = input_norm
        self.input_percentiles = _percentile_pair(input_percentiles)
        if not 0.0 <= context_crop <= 1.0:
            raise ValueError(f"context_crop is a share of the batches, in [0, 1]; got {context_crop}")
        self.context_crop = float(context_crop)
        # Stretched inputs are normalised by their whole image's percentiles, estimated on
        # a ≤ 256² grid of it (the patch alone would not know where it sits in its image).
        self._plane_grid = ({id(p): p.data[::-(-max(p.shape_yx) // 256), ::-(-max(p.shape_yx) // 256)]
                             for p in pool.train} if input_norm == "stretch" else {})
        self.luminance_check = luminance_check
        self.relative_luminance = float(relative_luminance)
        # Relative check: each training plane's own luminance (Algorithm 1's statistic).
        self._image_luminance = ({id(p): mean_luminance(p.data) for p in pool.train}
                                 if luminance_check == "relative" else {})
        self.sigma_max = float(sigma_max)
        self.factor_range = (float(factor_range[0]), float(factor_range[1]))
        draw_degradation(np.random.default_rng(0), sigma_max=self.sigma_max,
                         factor_range=self.factor_range)  # validates the parameters now
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        self.max_tries = int(max_tries)
        self.val_crop = int(val_crop)
        self.val_seed = int(val_seed)
        if int(val_draws) < 1:
            raise ValueError(f"val_draws must be >= 1, got {val_draws}")
        self.val_draws = int(val_draws)
        self.min_std = float(min_std)
        self.max_empty = float(max_empty)
        self._samplers: dict[int, PatchSampler] = {}
        self._mod_samplers: dict[int, list[PatchSampler]] = {}
        self.val_thresholds: dict[str, float] = {}
        self._val, self.val_skipped = self._prepare_validation()
        self._baselines: list[dict[str, Any]] | None = None
        self.acceptance = self._estimate_acceptance(int(acceptance_samples))

    # ------------------------------------------------------------------ identity
    @property
    def objective(self) -> dict[str, Any]:
        """The loss switches, part of the checkpoint identity (a run cannot change them)."""
        return {
            "l1": 1.0,
            "feature_weight": self.feature_weight,
            "feature_layer": "conv5_3" if self.feature_weight > 0 else None,
            "feature_scale": self.objective_fn.feature_scale if self.feature_weight > 0 else None,
            "adversarial_weight": self.adversarial_weight,
            "conditional": self.conditional if self.adversarial_weight > 0 else None,
            "real_labels": list(REAL_LABELS) if self.adversarial_weight > 0 else None,
            "fake_labels": list(FAKE_LABELS) if self.adversarial_weight > 0 else None,
        }

    # ------------------------------------------------------------------ training
    def build_extras(self) -> dict[str, torch.nn.Module]:
        """``{"disc": SwishDiscriminator}`` when the objective has a GAN term, else ``{}``."""
        if self.adversarial_weight <= 0:
            return {}
        return {"disc": _build("dpe_discriminator", **self.disc_config)}

    def sampler(self, patch: int) -> PatchSampler:
        """The (cached) patch sampler over the training planes for ``patch``-pixel patches."""
        if patch not in self._samplers:
            self._samplers[patch] = PatchSampler(
                self.pool.train, patch, min_std=self.min_std, max_empty=self.max_empty
            )
        return self._samplers[patch]

    def modality_samplers(self, patch: int) -> list[PatchSampler]:
        """(Cached) one patch sampler per training modality with a plane of at least ``patch``."""
        if patch not in self._mod_samplers:
            out = []
            for mod in dict.fromkeys(p.modality for p in self.pool.train):
                planes = [p for p in self.pool.train if p.modality == mod]
                if max(min(p.shape_yx) for p in planes) >= patch:
                    out.append(PatchSampler(planes, patch, min_std=self.min_std,
                                            max_empty=self.max_empty))
            if not out:
                self.sampler(patch)  # raises the sampler's error (no plane is large enough)
            self._mod_samplers[patch] = out
        return self._mod_samplers[patch]

    def threshold(self, plane: Plane) -> float:
        """The luminance a training patch cut from ``plane`` must exceed (module docstring)."""
        if self.luminance_check == "paper":
            return self.brightness_threshold
        return min(self.brightness_threshold,
                   self.relative_luminance * self._image_luminance[id(plane)])

    def _bright_patch(
        self, sampler: PatchSampler, rng: np.random.Generator
    ) -> tuple[np.ndarray, Plane, tuple[int, int]]:
        """One patch passing the luminance check (or the brightest of ``max_tries``), the
        plane it was cut from and its corner there."""
        best, best_lum = None, -1.0
        for _ in range(self.max_tries):
            cand, plane, origin = sampler.sample_with_origin(rng)
            lum = mean_luminance(cand)
            if lum > self.threshold(plane):
                return cand, plane, origin
            if lum > best_lum:
                best, best_lum = (cand, plane, origin), lum
        assert best is not None
        return best

    def _stretch_grid(self, plane: Plane, origin: tuple[int, int], patch: int,
                      rng: np.random.Generator) -> np.ndarray:
        """The pixels a patch's stretch percentiles are estimated on: its whole plane (a ≤ 256²
        grid of it), or, for a ``context_crop`` share of the patches, a window of the plane
        around the patch, its side a log-uniform fraction between the patch's and the
        plane's, as a user's image may be any crop of an acquisition whose clean intensities
        were set by the whole of it."""
        if not (self.context_crop > 0 and rng.random() < self.context_crop):
            return self._plane_grid[id(plane)]
        h, w = plane.shape_yx
        scale = float(np.exp(rng.uniform(np.log(patch / min(h, w)), 0.0)))
        wy, wx = max(patch, round(scale * h)), max(patch, round(scale * w))
        y, x = origin
        y0 = int(rng.integers(max(0, y + patch - wy), min(y, h - wy) + 1))
        x0 = int(rng.integers(max(0, x + patch - wx), min(x, w - wx) + 1))
        step = -(-max(wy, wx) // 256)
        return plane.data[y0:y0 + wy:step, x0:x0 + wx:step]

    def _stretched_degradation(
        self, patch: np.ndarray, grid: np.ndarray, params: Any, rng: np.random.Generator
    ) -> np.ndarray:
        """Algorithm 1 on the patch's image (``grid``: :meth:`_stretch_grid`), stretched by
        that image's :attr:`input_percentiles`, at the patch. Algorithm 1's contrast and
        brightness steps are affine with a positive slope and never clip (factors < 1 blend
        towards the mean and scale down), so the stretch cancels them exactly: only the noise
        step is applied, to the patch and to the grid the percentiles are estimated on."""
        noisy = np.clip(patch + params.sigma * rng.standard_normal(patch.shape), 0.0, 1.0)
        grid = np.clip(grid + params.sigma * rng.standard_normal(grid.shape), 0.0, 1.0)
        lo, hi = np.percentile(grid, self.input_percentiles)
        if not hi > lo:
            return noisy.astype(np.float32)
        return np.clip((noisy - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)

    def sample_batch(
        self, rng: np.random.Generator, batch: int, patch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(degraded, clean)``: float32 ``batch×3×patch×patch`` in [-1, 1] (module docstring)."""
        relative = self.luminance_check == "relative"
        samplers = self.modality_samplers(patch) if relative else [self.sampler(patch)]
        clean = np.empty((batch, 3, patch, patch), dtype=np.float32)
        degraded = np.empty_like(clean)
        for i in range(batch):
            # relative: a modality first, and a rejected patch is redrawn from it
            sampler = samplers[int(rng.integers(len(samplers)))] if relative else samplers[0]
            p, plane, origin = self._bright_patch(sampler, rng)
            grid = (self._stretch_grid(plane, origin, patch, rng)
                    if self.input_norm == "stretch" else None)
            k = int(rng.integers(8))
            p = np.rot90(p, k % 4, axes=(0, 1))
            if k >= 4:
                p = p[:, ::-1]
            params = draw_degradation(rng, sigma_max=self.sigma_max, factor_range=self.factor_range)
            if self.input_norm == "stretch":
                d = self._stretched_degradation(p, grid, params, rng)
            else:
                d = apply_degradation(p, params, rng)
            clean[i] = p[None] if p.ndim == 2 else p.transpose(2, 0, 1)
            degraded[i] = d[None] if d.ndim == 2 else d.transpose(2, 0, 1)
        return torch.from_numpy(degraded * 2.0 - 1.0), torch.from_numpy(clean * 2.0 - 1.0)

    def _objective_on(self, device: torch.device) -> PerceptualObjective:
        # The feature network is the recipe's, not the loop's: follow the batch's device.
        if self.objective_fn.features is not None:
            self.objective_fn.to(device)
        return self.objective_fn

    def _forward(self, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The network on [-1, 1] input, its output in [-1, 1] (a [0, 1] network is mapped)."""
        return net(x) if self._signed else net((x + 1.0) * 0.5) * 2.0 - 1.0

    def loss(
        self, net: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The generator objective without a GAN term (``loss="l1"``, or λ_G = 0)."""
        if self.adversarial_weight > 0:
            raise ValueError(
                "this objective has a GAN term: the training loop calls losses() with the "
                "discriminator from build_extras()"
            )
        return self._objective_on(inputs.device).generator_loss(
            self._forward(net, inputs), targets, inputs)

    def losses(
        self,
        net: torch.nn.Module,
        extras: Mapping[str, torch.nn.Module],
        inputs: torch.Tensor,
        targets: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """``({"net": generator loss, "disc": discriminator loss}, logs)`` from one forward pass."""
        objective = self._objective_on(inputs.device)
        out = self._forward(net, inputs)
        disc = extras["disc"]
        g, glogs = objective.generator_loss(out, targets, inputs, disc)
        d, dlogs = objective.discriminator_loss(out, targets, inputs, disc)
        return {"net": g, "disc": d}, {**glogs, **dlogs}

    # ---------------------------------------------------------------- validation
    def _estimate_acceptance(self, n: int) -> dict[str, float]:
        """Share of candidate patches (per modality) that pass the luminance check."""
        if n <= 0:
            return {}
        rng = np.random.default_rng(12345)  # separate from the training stream
        out = {}
        for mod in dict.fromkeys(p.modality for p in self.pool.train):
            planes = [p for p in self.pool.train if p.modality == mod]
            size = min(128, *(min(p.shape_yx) for p in planes))
            s = PatchSampler(planes, size, min_std=self.min_std, max_empty=self.max_empty)
            ok = 0
            for _ in range(n):
                cand, plane = s.sample_with_plane(rng)
                ok += mean_luminance(cand) > self.threshold(plane)
            out[mod] = ok / n
        return out

    def _val_rng(self, plane: Plane, draw: int) -> np.random.Generator:
        """The generator of one plane's ``draw``-th validation degradation: it depends on
        ``val_seed``, the plane's modality and name and ``draw`` only, so adding, removing or
        reordering other planes leaves it unchanged."""
        key = zlib.crc32(f"{plane.modality}:{plane.name}".encode())
        return np.random.default_rng([self.val_seed, key, draw])

    def _prepare_validation(self) -> tuple[list[dict[str, Any]], list[str]]:
        items, skipped = [], []
        crops = [(plane, np.ascontiguousarray(center_crop(plane.data, self.val_crop),
                                              dtype=np.float32)) for plane in self.pool.val]
        lums = [mean_luminance(c) for _, c in crops]
        mods = {p.modality for p in self.pool.val}
        if self.luminance_check == "relative":
            self.val_thresholds = {
                m: min(self.brightness_threshold, self.relative_luminance * float(
                    np.median([v for (p, _), v in zip(crops, lums) if p.modality == m])))
                for m in sorted(mods)}
        else:
            self.val_thresholds = dict.fromkeys(sorted(mods), self.brightness_threshold)
        for (plane, clean), lum in zip(crops, lums):
            if not lum > self.val_thresholds[plane.modality]:
                skipped.append(f"{plane.modality}:{plane.name} (L {lum:.1f})")
                continue
            for draw in range(self.val_draws):
                rng = self._val_rng(plane, draw)
                params = draw_degradation(rng, sigma_max=self.sigma_max,
                                          factor_range=self.factor_range)
                degraded = apply_degradation(clean, params, rng)
                items.append({
                    "plane": plane,
                    "draw": draw,
                    "clean": clean,
                    "degraded": degraded,
                    # what a network sees, per input_norm (DPE's [-1, 1], 3 channels)
                    "inputs": {"none": self._net_input(degraded, plane.rgb),
                               "stretch": self._net_input(
                                   percentile_stretch(degraded, *self.input_percentiles),
                                   plane.rgb)},
                    "params": params,
                    "level": min(LASSIM_LEVEL, max_lassim_level(clean.shape[:2])),
                })
        if not items:
            raise ValueError(
                "no validation plane is bright enough for Algorithm 1 (mean non-zero Lab L > "
                f"{self.brightness_threshold:g}): {', '.join(skipped)}; add brighter validation "
                "planes or lower brightness_threshold"
            )
        return items, skipped

    def network_input(self, item: Mapping[str, Any], input_norm: str | None = None,
                      input_percentiles: Sequence[float] | None = None) -> np.ndarray:
        """What a network trained on ``input_norm`` / ``input_percentiles`` (default: this
        recipe's) sees of a validation item: 3×H×W float32 in [-1, 1]."""
        norm = self.input_norm if input_norm is None else input_norm
        if norm not in INPUT_NORMS:
            raise ValueError(f"unknown input_norm {norm!r}; choose one of {', '.join(INPUT_NORMS)}")
        pct = (self.input_percentiles if input_percentiles is None
               else _percentile_pair(input_percentiles))
        if norm == "stretch" and pct != self.input_percentiles:
            return self._net_input(percentile_stretch(item["degraded"], *pct), item["plane"].rgb)
        return item["inputs"][norm]

    @staticmethod
    def _net_input(image: np.ndarray, rgb: bool) -> np.ndarray:
        chw = image.transpose(2, 0, 1) if rgb else np.broadcast_to(image, (3, *image.shape))
        return np.ascontiguousarray(chw * 2.0 - 1.0, dtype=np.float32)

    @staticmethod
    def _score(item: Mapping[str, Any], out: np.ndarray) -> dict[str, float]:
        plane: Plane = item["plane"]
        clean, rgb = item["clean"], plane.rgb
        row = {
            "psnr": float(_psnr(clean, out, data_range=1.0, rgb=rgb)),
            "ssim": float(_ssim(clean, out, data_range=1.0, rgb=rgb)),
            "lassim": float(_lassim(item["degraded"], out, level=item["level"], rgb=rgb))
            if item["level"] >= 0 else float("nan"),
            "l1": float(np.abs(out - clean).mean()),
        }
        if rgb:
            row["delta_e"] = float(_delta_e(clean, out, data_range=1.0, rgb=True))
        return row

    def evaluate(
        self, net: torch.nn.Module, device: str | torch.device = "cpu",
        input_norm: str | None = None, input_percentiles: Sequence[float] | None = None,
    ) -> tuple[list[dict[str, Any]], np.ndarray]:
        """Run the network on the fixed validation set.

        ``input_norm`` is what the network was trained to see (default: this recipe's), so a
        model trained on stretched inputs and one trained on the paper's are scored on the
        same degraded crops; ``input_percentiles`` (default: this recipe's) are those of a
        stretched input, so weights trained on another stretch are scored as they were trained.

        Returns:
            ``(rows, preview)``: one row per plane with ``name, modality, method ("dpe"),
            psnr, ssim, lassim, l1`` (+ ``delta_e`` for colour planes), and the preview (float32
            [0, 1], the output on the first validation plane). The network is put in eval mode
            for the call and restored afterwards.
        """
        device = torch.device(device)
        rows: list[dict[str, Any]] = []
        preview = None
        with evaluating(net):
            for item in self._val:
                plane: Plane = item["plane"]
                x = torch.from_numpy(
                    self.network_input(item, input_norm, input_percentiles)[None]).to(device)
                y = ((self._forward(net, x)[0] + 1.0) * 0.5).clamp_(0.0, 1.0).cpu().numpy()
                out = self.to_plane(y, plane.rgb).astype(np.float32)
                rows.append({"name": plane.name, "modality": plane.modality, "method": "dpe",
                             "draw": item["draw"], **self._score(item, out)})
                if preview is None:
                    preview = out
        assert preview is not None
        return rows, preview

    def baselines(self) -> list[dict[str, Any]]:
        """Rows as :meth:`evaluate`'s for ``method`` = ``"input"`` (the degraded image itself),
        ``"clahe"``, ``"stretch"`` (2–98 %) and :data:`WIDE_STRETCH` (the stretch by
        :data:`INPUT_PERCENTILES`, a reference that the gate does not use); computed once and
        cached."""
        if self._baselines is None:
            rows = []
            for item in self._val:
                plane: Plane = item["plane"]
                for method, fn in (("input", lambda a: a), ("clahe", clahe),
                                   ("stretch", percentile_stretch),
                                   (WIDE_STRETCH, lambda a: percentile_stretch(a, *INPUT_PERCENTILES))):
                    out = fn(item["degraded"])
                    rows.append({"name": plane.name, "modality": plane.modality, "method": method,
                                 "draw": item["draw"], **self._score(item, out)})
            self._baselines = rows
        return self._baselines

    @staticmethod
    def summarize(rows: Sequence[Mapping[str, Any]], key: str, method: str | None = None) -> float:
        """Mean of ``key`` over modalities of the per-modality means (rows of ``method``, or
        all); NaN when no row has ``key`` (e.g. ΔE without colour planes)."""
        return modality_mean(rows, key,
                             lambda r: (method is None or r.get("method") == method) and key in r)

    def validate(
        self, net: torch.nn.Module, device: str | torch.device = "cpu"
    ) -> tuple[dict[str, float], np.ndarray]:
        """``({"psnr", "ssim", "lassim", "loss"[, "delta_e"]}, preview)`` (module docstring)."""
        rows, preview = self.evaluate(net, device)
        metrics = {
            "psnr": self.summarize(rows, "psnr"),
            "ssim": self.summarize(rows, "ssim"),
            "lassim": self.summarize(rows, "lassim"),
            "loss": self.summarize(rows, "l1"),
        }
        de = self.summarize(rows, "delta_e")
        if np.isfinite(de):
            metrics["delta_e"] = de
        return metrics, preview

    def describe(self) -> dict[str, Any]:
        """What the recipe trains on and how, for the best weights file's header and the card."""
        lo, hi = self.factor_range
        if self.luminance_check == "relative":
            check = (f"patches with mean non-zero 8-bit Lab L <= "
                     f"min({self.brightness_threshold:g}, {self.relative_luminance:g} x that of "
                     "their whole image) redrawn from the same modality")
        else:
            check = (f"patches with mean non-zero 8-bit Lab L <= {self.brightness_threshold:g} "
                     "redrawn")
        per_mod: dict[str, list[float]] = {}
        for p in self.pool.train:
            per_mod.setdefault(p.modality, []).append(self.threshold(p))
        return {
            "degradation": (
                f"Algorithm 1: {check}; Gaussian noise sigma ~ U(0, "
                f"{self.sigma_max:g})/255 (clipped), then contrast and brightness factors ~ "
                f"U({lo:g}, {hi:g}) (torchvision ColorJitter definitions)"
            ),
            "loss": self.loss_name,
            "objective": self.objective,
            "discriminator": self.disc_config if self.adversarial_weight > 0 else None,
            "train_planes": plane_ids(self.pool.train),
            "val_planes": plane_ids(i["plane"] for i in self._val if i["draw"] == 0),
            "val_skipped_too_dark": list(self.val_skipped),
            "luminance_check": self.luminance_check,
            "relative_luminance": self.relative_luminance
            if self.luminance_check == "relative" else None,
            "train_luminance_thresholds": {m: [round(min(v), 1), round(max(v), 1)]
                                           for m, v in per_mod.items()},
            "val_luminance_thresholds": {m: round(v, 1) for m, v in self.val_thresholds.items()},
            "patch_acceptance": self.acceptance,
            "val_crop": self.val_crop,
            "val_seed": self.val_seed,
            "val_draws": self.val_draws,
            "input_norm": self.input_norm,
            # read by the model registry: the engine stretches a user's image the same way
            "input_percentiles": list(self.input_percentiles) if self.input_norm == "stretch" else None,
            "context_crop": self.context_crop if self.input_norm == "stretch" else None,
        }
