"""Lesion-focused super-resolution: MS-GAN (×2 then ×4) or SRResNet (J. Zhu,
G. Yang, P. Lio, "How can we make GAN perform better in single medical image super-resolution?
A lesion focused multi-scale approach", ISBI 2019; "LFSR / MS-GAN").

Training pairs
--------------
HR = a ``patch``² window of a real plane, drawn by :class:`LesionPatchSampler` (below), one of
the 8 flips / rotations, replicated to three channels when gray. LR = HR downsampled ×4 by one
of the recipe's ``kernels``, drawn per patch (a user's low-resolution image was not made by any
one known kernel, so the shipped models train on a mix and are validated on each):

* ``"bicubic"``: antialiased bicubic (``F.interpolate(..., mode="bicubic", antialias=True)``:
  Keys' cubic with a = −0.5 stretched by the factor, as MATLAB's ``imresize`` and PIL do; the
  usual way SR benchmarks make LR images).
* ``"gaussian"``: a Gaussian blur of σ = (factor − 1) / 2 then decimation with linear
  interpolation at the LR pixel centres: scikit-image's ``resize(..., anti_aliasing=True)``,
  which this calls (what many users' pipelines do).
* ``"blur3"``: the author's later code: a 3×3 Gaussian blur, applied here as the binomial
  [1 2 1]/4 (what OpenCV's ``GaussianBlur(img, (3, 3), 0)`` uses), then the antialiased
  bicubic.

The library default is ``("bicubic",)`` (the paper says only "LR images were simulated by
downsampling"); ``training/train_sr.py`` trains the shipped models on all three. The kernels
are part of the objective (a checkpoint made with one set is refused by another). The window
is cut with a 12-pixel margin that is downsampled with it and then cropped away, so every LR
pixel sees real neighbours, never a patch border.
* **×2 target** of MS-GAN (the paper's I_dr, "the ×2 down-sampled version of I_hr"): the HR
  patch bicubic-downsampled ×2 (antialiased, no blur: a clean half-resolution target).
* **Per-volume min–max normalisation**: before anything else the planes of each source volume
  (planes named ``<source>[...]`` of one modality) are mapped together to [0, 1] by their joint
  min and max — the mapping the inference engine applies to a whole array at run time. On the
  project pool (already percentile-normalised per source) it changes little, but it keeps the
  recipe right for any pool.

Lesion-focused sampling (LFSR)
------------------------------
The paper's LFSR trains and infers on lesion ROIs only. :class:`LesionPatchSampler` centres
patches on labelled pixels when a plane has a mask (``masks={plane name: Y×X array}``, non-zero
= lesion) and otherwise on **structure**: pixels whose gradient magnitude (Gaussian derivative,
σ = 1 px) is in the top quarter of the plane's foreground, drawn in proportion to it. In both
cases a patch is **never mostly background**: a candidate whose patch has more than
``max_background`` (default 0.5) background pixels is never drawn (checked exactly with an
integral image, not by rejection with a bounded number of tries). Background = intensity <=
``background_level`` (default 0.02 of the volume's range), raw or Gaussian-smoothed (σ = 2 px, so
that noisy air counts as well); colour planes: dark, or near-white (the empty slide).

Objective
---------
``mode="msgan"`` (the paper's MS-GAN, eq. 7)::

    L_G = MSE(y2, HR↓2) + MSE(y4, HR) + w_V · MSE(V(y4), V(HR)) + w_A · (−mean C(y4))
    L_C = mean C(y4) − mean C(HR) + λ · mean_i (‖∇ C(x̂_i)‖₂ − 1)²
          x̂ = ε·HR + (1 − ε)·y4,  ε ~ U(0, 1) per sample

* V = VGG16 **pool4** features (after conv4_3's ReLU and the 4th max-pool, 1/16 resolution, 512
  channels; :class:`~napari_medenhance.core.nets.vgg.VGG16Features`, the shipped converted
  ImageNet weights). The SRGAN reference implementation the paper builds on (TensorLayer)
  takes VGG19's pool4 with weight 2e-6 on images in [-1, 1]; VGG-19 ImageNet weights cannot be
  obtained here (``nets/vgg.py``) and VGG16's pool4 ends the same block. Our images are in [0, 1], where the
  pixel MSE is 4× smaller than in [-1, 1], so w_V = 2e-6 / 4 = **5e-7** keeps the reference
  balance between the pixel and feature terms.
* C = :class:`~napari_medenhance.core.nets.discriminators.WGANCritic` (no BN), WGAN-GP with
  gradient penalty λ = **10** (Gulrajani et al.); the generator's adversarial weight w_A =
  **1e-3** (the SRGAN reference's weight for its GAN term): small, so MSE and VGG lead and
  the critic only sharpens. ε is drawn from torch's CPU RNG (checkpointed by the loop). The
  loop updates generator and critic once per step each (no n_critic = 5 inner loop: the
  adversarial term is weak, and one shared step keeps training resumable and simple); both
  use Adam with the loop's betas (0.9, 0.99).

``mode="srresnet"``: the PSNR-oriented baseline — SRResNet ×4 trained with MSE(y4, HR) only
(no VGG, no critic). The weights can be overridden one by one (``mse2_weight``, ``vgg_weight``,
``adversarial_weight``; 0 switches a term off, and without an adversarial term no critic is
built).

Validation
----------
A fixed set, lesion-focused as the paper evaluates ("only the ROIs were evaluated"): of every
validation plane the ≤ ``val_crop``² window (sides multiples of 4) with the most structure —
the largest mean gradient magnitude among the windows at most ``max_background`` background,
chosen once, deterministically (on flat, noisy regions bicubic is already near the best any
model can do). ``evaluate(..., whole=True)`` adds the **whole planes** (cropped to multiples of
4; the ship gate needs both). For every kernel: ×4: LR = HR↓4 → the model's ×4 output and a
bicubic ×4 enlargement, each against HR. ×2: LR = HR↓2 → the ×2 head (MS-GAN) and bicubic ×2,
against HR. That is how ``msgan-x2`` is used (on an image at its native resolution), although
its head was trained on HR↓4 inputs (towards HR↓2): the ×2 rows measure that transfer
honestly, not the training task.
Metrics (outputs clipped to [0, 1], gray outputs averaged back to one channel): PSNR, SSIM
(data range 1), LaSSIM (level 3, or the deepest that fits) of output vs HR, and the MSE. Rows
carry ``kernel`` and ``region`` (``"window"`` / ``"plane"``). ``validate`` reports the model's
``psnr``/``ssim``/``lassim``/``loss`` (×4 windows, mean over kernels; ``loss`` = MSE),
``psnr_<kernel>`` (×4 windows) and ``psnr_x2``/``ssim_x2``/``lassim_x2`` and ``psnr_both``
(the mean of the ×2 and ×4 PSNR, MS-GAN's primary metric: it ships both; MS-GAN only);
:meth:`SRRecipe.baselines` the bicubic rows, computed once. Values are averaged over the
planes of a modality, then over modalities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...degrade import KERNELS, blur3, downsample
from ...metrics import lassim as _lassim
from ...metrics import max_lassim_level
from ...metrics import psnr as _psnr
from ...metrics import ssim as _ssim
from ...nets import build as _build
from ...nets import ARCHITECTURES
from ...nets.discriminators import WGANCritic
from ...nets.srresnet import MSGANGenerator, SRResNet
from ..losses import gradient_penalty
from ..patches import LesionPatchSampler, Plane, Pool, background_mask
from .base import RecipeBase, evaluating, modality_mean, network_config, plane_ids

__all__ = [
    "WGAN_WEIGHT",
    "GP_WEIGHT",
    "LesionPatchSampler",
    "SRRecipe",
    "VGG_LAYER",
    "VGG_WEIGHT",
    "KERNELS",
    "blur3",
    "downsample",
    "volume_minmax",
]

#: Training factor (MS-GAN: ×2 and ×4 heads; SRResNet: ×4).
SCALE = 4
#: w_V: VGG feature MSE weight (module docstring: SRGAN's 2e-6 for [-1, 1] images, / 4).
VGG_WEIGHT = 5e-7
#: The VGG16 layer of the feature loss.
VGG_LAYER = "pool4"
#: w_A: weight of the generator's WGAN term (not DPE's λ_G, ``losses.DPE_ADVERSARIAL_WEIGHT``).
WGAN_WEIGHT = 1e-3
#: λ of the gradient penalty.
GP_WEIGHT = 10.0
#: HR pixels cut around a training patch so the LR is made from real neighbours (multiple of 4).
MARGIN = 12
#: The LaSSIM level reported (lowered for crops too small for it).
LASSIM_LEVEL = 3
#: (generator arch, default extra weights: mse2, vgg, adversarial) per mode.
MODES = {"msgan": ("msgan", 1.0, VGG_WEIGHT, WGAN_WEIGHT), "srresnet": ("srresnet", 0.0, 0.0, 0.0)}


# ------------------------------------------------------------------------------ degradation


_KERNEL_IDS = {"bicubic": "bicubic-antialias", "gaussian": "gaussian-antialias+linear",
               "blur3": "blur3 + bicubic-antialias"}


_KERNEL_TEXT = {
    "bicubic": "antialiased bicubic (torch, Keys a=-0.5)",
    "gaussian": "Gaussian blur sigma=(factor-1)/2 then linear decimation "
                "(skimage resize, anti_aliasing=True)",
    "blur3": "3x3 Gaussian blur [1 2 1]/4 then antialiased bicubic",
}


def _lr_identity(kernels: Sequence[str]) -> str:
    """The objective's ``lr`` entry (one kernel: as recipes without a mix recorded it)."""
    return " | ".join(_KERNEL_IDS[k] for k in kernels) + f"/{SCALE}"


def _bicubic_up(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False)


def volume_minmax(planes: Sequence[Plane]) -> list[Plane]:
    """The planes with each source volume mapped jointly to [0, 1] by its min and max.

    A volume = the planes of one modality whose names share the part before ``[`` (the pool
    names planes ``nuclei.tif[50]``, windows ``RG3_UNCR[1222:1478,...]``). A constant volume is
    left as it is.
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(planes):
        groups.setdefault((p.modality, p.name.split("[", 1)[0]), []).append(i)
    out = list(planes)
    for idx in groups.values():
        lo = min(float(planes[i].data.min()) for i in idx)
        hi = max(float(planes[i].data.max()) for i in idx)
        if hi > lo:
            for i in idx:
                p = planes[i]
                data = ((p.data - np.float32(lo)) / np.float32(hi - lo)).clip(0.0, 1.0)
                out[i] = Plane(p.name, p.modality, data.astype(np.float32))
    return out


# ------------------------------------------------------------------------------ recipe


class SRRecipe(RecipeBase):
    """Lesion-focused SR training on a :class:`Pool` (module docstring).

    Args:
        pool: training planes (patches) and validation planes (fixed centre crops).
        mode: ``"msgan"`` (MS-GAN generator; MSE×2 + MSE×4 + VGG×4 + WGAN-GP) or
            ``"srresnet"`` (SRResNet ×4, MSE only: the PSNR-oriented row).
        config: generator constructor overrides (e.g. ``{"features": 8, "blocks": 1}`` in
            tests); the training factor is fixed at ×4 (MS-GAN ``output_scale=4``).
        critic_config: :class:`WGANCritic` overrides (``widths``, ``norm``).
        mse2_weight, vgg_weight, adversarial_weight: override the mode's weights (0 = off).
        gp_weight: λ of the gradient penalty (10).
        vgg_layer: VGG16 layer of the feature loss (``"pool4"``).
        features: the feature network (default ``VGG16Features((vgg_layer,))``, loaded only
            when ``vgg_weight > 0``).
        kernels: the LR kernels (:data:`KERNELS`), one drawn per training patch; validation
            reports each (default ``("bicubic",)``).
        masks: lesion masks ``{training plane name: Y×X}`` for the sampler.
        background_level, max_background, structure_quantile, smooth_share: the sampler's
            (:class:`~..patches.LesionPatchSampler`; ``smooth_share`` 0: structure-centred only).
        val_crop: validation crops are at most this many HR pixels per side (multiple of 4).
        arch: ``"msgan"`` / ``"srresnet"`` (the same as ``mode``), or any other registered SR
            architecture (:func:`napari_medenhance.core.tasks.register_architecture`): one ×4
            output trained with MSE alone (its class gives ``scale_from_config``).
    """

    task = "sr"
    primary_metric = "psnr"
    higher_is_better = True

    def __init__(
        self,
        pool: Pool,
        *,
        mode: str = "msgan",
        config: Mapping[str, Any] | None = None,
        critic_config: Mapping[str, Any] | None = None,
        mse2_weight: float | None = None,
        vgg_weight: float | None = None,
        adversarial_weight: float | None = None,
        gp_weight: float = GP_WEIGHT,
        vgg_layer: str = VGG_LAYER,
        features: torch.nn.Module | None = None,
        kernels: Sequence[str] = ("bicubic",),
        masks: Mapping[str, np.ndarray] | None = None,
        background_level: float = 0.02,
        max_background: float = 0.5,
        structure_quantile: float = 0.75,
        smooth_share: float = 0.0,
        val_crop: int = 256,
        arch: str | None = None,
    ) -> None:
        other = arch is not None and str(arch).lower() not in MODES
        if arch is not None and not other:
            mode = str(arch).lower()  # msgan / srresnet: the architecture is the mode
        if not other and mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        self._require_planes(pool)
        if other:
            # Any other registered SR network: one ×4 output, MSE alone (as SRResNet's mode).
            cls = ARCHITECTURES.get(str(arch).lower())
            if cls is None:
                raise ValueError(f"unknown architecture {arch!r}; known: "
                                 f"{', '.join(sorted(ARCHITECTURES))}")
            self.mode = self.arch = str(arch).lower()
            d_mse2 = d_vgg = d_adv = 0.0
            fixed: dict[str, Any] = {}
        else:
            self.mode = mode
            self.arch, d_mse2, d_vgg, d_adv = MODES[mode]
            cls = MSGANGenerator if self.arch == "msgan" else SRResNet
            fixed = {"output_scale": SCALE} if self.arch == "msgan" else {"scale": SCALE}
        # MS-GAN ships two models from one network: its best weights are those best at both.
        self.primary_metric = "psnr_both" if self.arch == "msgan" else "psnr"
        self.config: dict[str, Any] = network_config(cls, config, self.arch, fixed=fixed)
        if other:
            scale_of = getattr(cls, "scale_from_config", None)
            built = int(scale_of(self.config)) if callable(scale_of) else 1
            if built != SCALE:
                raise ValueError(f"the SR recipe trains ×{SCALE} networks; {self.arch!r} with "
                                 f"this config upscales ×{built} (its class's scale_from_config)")
        if any(k in (config or {}) and (config or {})[k] != v for k, v in fixed.items()):
            raise ValueError(f"the SR recipe trains at ×{SCALE}; leave {list(fixed)} at {SCALE}")
        self.mse2_weight = float(d_mse2 if mse2_weight is None else mse2_weight)
        self.vgg_weight = float(d_vgg if vgg_weight is None else vgg_weight)
        self.adversarial_weight = float(d_adv if adversarial_weight is None else adversarial_weight)
        self.gp_weight = float(gp_weight)
        if min(self.mse2_weight, self.vgg_weight, self.adversarial_weight, self.gp_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if self.arch == "srresnet" and self.mse2_weight > 0:
            raise ValueError("SRResNet has no ×2 head: mse2_weight must be 0 in mode 'srresnet'")
        if other and self.mse2_weight > 0:
            raise ValueError(f"only MS-GAN has a ×2 head: mse2_weight must be 0 for {self.arch!r}")
        self.critic_config: dict[str, Any] = network_config(WGANCritic, critic_config, "critic")
        self.vgg_layer = str(vgg_layer)
        if self.vgg_weight > 0 and features is None:
            from ...nets.vgg import VGG16Features

            features = VGG16Features((self.vgg_layer,))
        self.features = features if self.vgg_weight > 0 else None
        self.kernels: tuple[str, ...] = tuple(dict.fromkeys(str(k) for k in kernels))
        if not self.kernels or any(k not in KERNELS for k in self.kernels):
            raise ValueError(f"kernels must be a non-empty subset of {', '.join(KERNELS)}; got "
                             f"{list(kernels)}")
        self.masks = dict(masks or {})
        self.background_level = float(background_level)
        self.max_background = float(max_background)
        self.structure_quantile = float(structure_quantile)
        if not 0.0 <= smooth_share <= 1.0:
            raise ValueError(f"smooth_share must be in [0, 1]; got {smooth_share}")
        self.smooth_share = float(smooth_share)
        self.val_crop = int(val_crop) - int(val_crop) % SCALE
        if self.val_crop < SCALE * 2:
            raise ValueError(f"val_crop must be at least {SCALE * 2}; got {val_crop}")
        self.train_planes = volume_minmax(pool.train)
        self.val_planes = volume_minmax(pool.val)
        self._samplers: dict[int, LesionPatchSampler] = {}
        self._val = self._prepare_validation()
        self._whole: list[dict[str, Any]] | None = None

    # ------------------------------------------------------------------ identity
    @property
    def objective(self) -> dict[str, Any]:
        """The loss switches, part of the checkpoint identity (a run cannot change them)."""
        adv = self.adversarial_weight > 0
        return {
            "mode": self.mode,
            "mse4": 1.0,
            "mse2_weight": self.mse2_weight,
            "vgg_weight": self.vgg_weight,
            "vgg_layer": self.vgg_layer if self.vgg_weight > 0 else None,
            "adversarial": "wgan-gp" if adv else None,
            "adversarial_weight": self.adversarial_weight,
            "gp_weight": self.gp_weight if adv else None,
            "critic": self.critic_config if adv else None,
            "lr": _lr_identity(self.kernels),
            "sampling": {"lesion_masks": sorted(self.masks), "background_level": self.background_level,
                         "max_background": self.max_background,
                         "structure_quantile": self.structure_quantile},
        }

    # ------------------------------------------------------------------ training
    def build(self) -> torch.nn.Module:
        """A fresh generator with :attr:`config`; its output convs start at zero, so the
        untrained network returns the bicubic enlargement (global residual) and every gain
        over bicubic is learnt."""
        net = super().build()
        if self.config.get("global_residual", True):
            for name in ("out", "out2", "out4"):
                conv = getattr(net, name, None)
                if conv is not None:
                    torch.nn.init.zeros_(conv.weight)
                    torch.nn.init.zeros_(conv.bias)
        return net

    def build_extras(self) -> dict[str, torch.nn.Module]:
        """``{"critic": WGANCritic}`` when the objective has an adversarial term, else ``{}``."""
        if self.adversarial_weight <= 0:
            return {}
        return {"critic": _build("wgan_critic", **self.critic_config)}

    def sampler(self, patch: int) -> LesionPatchSampler:
        """The (cached) lesion-focused sampler for ``patch``-pixel HR patches."""
        if patch not in self._samplers:
            self._samplers[patch] = LesionPatchSampler(
                self.train_planes, patch, margin=MARGIN, masks=self.masks,
                background_level=self.background_level, max_background=self.max_background,
                structure_quantile=self.structure_quantile, smooth_share=self.smooth_share,
            )
        return self._samplers[patch]

    def sample_batch(
        self, rng: np.random.Generator, batch: int, patch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(LR, HR)``: float32 ``batch×3×(patch/4)×(patch/4)`` and ``batch×3×patch×patch``
        in [0, 1] (module docstring). ``patch`` must be a multiple of 4."""
        if patch % SCALE:
            raise ValueError(f"patch must be a multiple of {SCALE} for ×{SCALE} training; got {patch}")
        sampler = self.sampler(patch)
        win = patch + 2 * MARGIN
        hr = np.empty((batch, 3, win, win), dtype=np.float32)
        for i in range(batch):
            w = sampler.sample_one(rng)
            k = int(rng.integers(8))
            w = np.rot90(w, k % 4, axes=(0, 1))
            if k >= 4:
                w = w[:, ::-1]
            hr[i] = w[None] if w.ndim == 2 else w.transpose(2, 0, 1)
        t = torch.from_numpy(hr)
        c = MARGIN // SCALE
        if len(self.kernels) == 1:
            lr = downsample(t, SCALE, kernel=self.kernels[0])
        else:
            which = rng.integers(len(self.kernels), size=batch)
            lr = torch.empty(batch, 3, win // SCALE, win // SCALE)
            for j, k in enumerate(self.kernels):
                idx = torch.from_numpy(np.flatnonzero(which == j))
                if len(idx):
                    lr[idx] = downsample(t[idx], SCALE, kernel=k)
        lr = lr[:, :, c : c + patch // SCALE, c : c + patch // SCALE]
        return lr.contiguous(), t[:, :, MARGIN : MARGIN + patch, MARGIN : MARGIN + patch].contiguous()

    def _features_on(self, device: torch.device) -> torch.nn.Module | None:
        if self.features is not None:
            self.features.to(device)  # the recipe's module, not the loop's: follow the batch
        return self.features

    def _generator_terms(
        self, net: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """(pixel + feature loss, the ×4 output, logs)."""
        if self.arch == "msgan":
            y2, y4 = net.forward_multi(inputs)
        else:
            y2, y4 = None, net(inputs)
        mse4 = F.mse_loss(y4, targets)
        total = mse4
        logs = {"mse4": float(mse4.detach())}
        if self.mse2_weight > 0:
            assert y2 is not None
            with torch.no_grad():
                t2 = downsample(targets, 2)
            mse2 = F.mse_loss(y2, t2)
            total = total + self.mse2_weight * mse2
            logs["mse2"] = float(mse2.detach())
        if self.vgg_weight > 0:
            feats = self._features_on(inputs.device)
            fo = feats(y4)[self.vgg_layer]
            with torch.no_grad():
                ft = feats(targets)[self.vgg_layer]
            vgg = F.mse_loss(fo, ft)
            total = total + self.vgg_weight * vgg
            logs["vgg"] = float(vgg.detach())
        return total, y4, logs

    def loss(
        self, net: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The generator objective without an adversarial term (``srresnet``, or w_A = 0)."""
        if self.adversarial_weight > 0:
            raise ValueError(
                "this objective has a WGAN-GP term: the training loop calls losses() with the "
                "critic from build_extras()"
            )
        total, _, logs = self._generator_terms(net, inputs, targets)
        logs["total"] = float(total.detach())
        return total, logs

    def losses(
        self,
        net: torch.nn.Module,
        extras: Mapping[str, torch.nn.Module],
        inputs: torch.Tensor,
        targets: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """``({"net": L_G, "critic": L_C}, logs)`` from one generator pass (module docstring)."""
        critic = extras["critic"]
        total, y4, logs = self._generator_terms(net, inputs, targets)
        adv = -critic(y4).mean()
        g = total + self.adversarial_weight * adv
        fake = y4.detach()
        c_real, c_fake = critic(targets).mean(), critic(fake).mean()
        gp = gradient_penalty(critic, targets, fake)
        c = c_fake - c_real + self.gp_weight * gp
        logs.update(adv=float(adv.detach()), total=float(g.detach()), c_loss=float(c.detach()),
                    gp=float(gp.detach()), w_dist=float((c_real - c_fake).detach()))
        return {"net": g, "critic": c}, logs

    # ---------------------------------------------------------------- validation
    def _lr_versions(self, item: dict[str, Any], win: np.ndarray, margin: int) -> dict[str, Any]:
        """Add ``item[("lr", factor, kernel)]``: the LR of ``win`` (the HR with ``margin`` pixels
        of context around it) by every kernel at ×2 and ×4, the context cropped away."""
        t = torch.from_numpy(_chw(win))[None]
        h, w = item["hr"].shape[:2]
        for f in (2, SCALE):
            c = margin // f
            for k in self.kernels:
                lr = downsample(t, f, kernel=k)
                item[("lr", f, k)] = lr[:, :, c : c + h // f, c : c + w // f].contiguous()
        return item

    def _prepare_validation(self) -> list[dict[str, Any]]:
        items = []
        for plane in self.val_planes:
            h, w = plane.shape_yx
            ch = min(h, self.val_crop) - min(h, self.val_crop) % SCALE
            cw = min(w, self.val_crop) - min(w, self.val_crop) % SCALE
            if ch < 2 * SCALE or cw < 2 * SCALE:
                continue
            y0, x0 = _most_structured_window(plane, ch, cw, self.background_level,
                                             self.max_background)
            hr = plane.data[y0 : y0 + ch, x0 : x0 + cw]
            item: dict[str, Any] = {"plane": plane, "region": "window",
                                    "hr": np.ascontiguousarray(hr, np.float32),
                                    "level": min(LASSIM_LEVEL, max_lassim_level((ch, cw)))}
            # The LR of the crop is made from the crop and MARGIN real pixels around it
            # (reflected where the plane ends), as in training.
            win = _window(plane.data, y0 - MARGIN, x0 - MARGIN, ch + 2 * MARGIN, cw + 2 * MARGIN)
            items.append(self._lr_versions(item, win, MARGIN))
        if not items:
            raise ValueError(f"no validation plane is at least {2 * SCALE}×{2 * SCALE} pixels")
        return items

    def _whole_planes(self) -> list[dict[str, Any]]:
        """The whole validation planes (cropped to multiples of 4) as validation items; the LR
        is made from the plane alone, its borders as each kernel treats them."""
        if self._whole is None:
            self._whole = []
            for plane in self.val_planes:
                h, w = (s - s % SCALE for s in plane.shape_yx)
                if h < 2 * SCALE or w < 2 * SCALE:
                    continue
                hr = np.ascontiguousarray(plane.data[:h, :w], np.float32)
                item = {"plane": plane, "region": "plane", "hr": hr,
                        "level": min(LASSIM_LEVEL, max_lassim_level((h, w)))}
                self._whole.append(self._lr_versions(item, hr, 0))
        return self._whole

    def _score(self, item: Mapping[str, Any], out: np.ndarray) -> dict[str, float]:
        plane: Plane = item["plane"]
        hr, rgb = item["hr"], plane.rgb
        return {
            "psnr": float(_psnr(hr, out, data_range=1.0, rgb=rgb)),
            "ssim": float(_ssim(hr, out, data_range=1.0, rgb=rgb)),
            "lassim": float(_lassim(hr, out, level=item["level"], rgb=rgb))
            if item["level"] >= 0 else float("nan"),
            "mse": float(np.mean((out - hr) ** 2)),
        }

    def rows_for(self, item: Mapping[str, Any], method: str, f: int, kernel: str,
                 y: torch.Tensor) -> tuple[dict[str, Any], np.ndarray]:
        """The validation row of an output ``y`` (1×C×H×W, [0, 1], the item's ×``f`` HR
        size) made by ``method`` from the item's LR of ``kernel``, and the output plane: how
        the gate scores a classical method beside the network."""
        plane: Plane = item["plane"]
        out = self.to_plane(y[0].float().clamp(0.0, 1.0).cpu().numpy(), plane.rgb).astype(np.float32)
        return {"name": plane.name, "modality": plane.modality, "method": method, "scale": f,
                "kernel": kernel, "region": item["region"], **self._score(item, out)}, out

    def validation_items(self, whole: bool = False) -> list[dict[str, Any]]:
        """The fixed validation windows (and, with ``whole``, the whole validation planes,
        ``region="plane"``); do not modify them."""
        return self._val + (self._whole_planes() if whole else [])

    def evaluate(
        self, net: torch.nn.Module, device: str | torch.device = "cpu", *, whole: bool = False
    ) -> tuple[list[dict[str, Any]], np.ndarray]:
        """The network on the fixed validation set.

        Args:
            whole: also the whole validation planes (rows with ``region="plane"``).

        Returns:
            ``(rows, preview)``: rows ``name, modality, method (the mode), scale (2 or 4),
            kernel, region, psnr, ssim, lassim, mse`` (×2 rows only for MS-GAN), and the ×4
            output on the first validation window with the first kernel (float32 [0, 1]). The
            network's mode is restored afterwards.
        """
        device = torch.device(device)
        rows: list[dict[str, Any]] = []
        preview = None
        with evaluating(net):
            for item in self.validation_items(whole):
                for k in self.kernels:
                    y4 = net(item[("lr", SCALE, k)].to(device))
                    row, out = self.rows_for(item, self.mode, SCALE, k, y4)
                    rows.append(row)
                    if preview is None:
                        preview = out
                    if self.arch == "msgan":
                        y2 = net.forward_x2(item[("lr", 2, k)].to(device))
                        rows.append(self.rows_for(item, self.mode, 2, k, y2)[0])
        assert preview is not None
        return rows, preview

    def baselines(self, *, whole: bool = False) -> list[dict[str, Any]]:
        """Rows as :meth:`evaluate`'s for ``method = "bicubic"`` at ×2 and ×4 (cached)."""
        for item in self.validation_items(whole):
            if "bicubic_rows" not in item:
                item["bicubic_rows"] = [
                    self.rows_for(item, "bicubic", f, k, _bicubic_up(item[("lr", f, k)], f))[0]
                    for k in self.kernels for f in (2, SCALE)
                ]
        return [r for item in self.validation_items(whole) for r in item["bicubic_rows"]]

    @staticmethod
    def summarize(rows: Sequence[Mapping[str, Any]], key: str, method: str | None = None,
                  scale: int | None = None, **match: Any) -> float:
        """Mean over modalities of the per-modality means of ``key`` (rows of ``method`` and
        ``scale``, and with the values in ``match``, e.g. ``kernel="gaussian"``,
        ``region="plane"``; all when None); NaN when no row matches."""
        want = {k: v for k, v in {"method": method, "scale": scale, **match}.items() if v is not None}
        return modality_mean(rows, key,
                             lambda r: key in r and all(r.get(k) == v for k, v in want.items()))

    def validate(
        self, net: torch.nn.Module, device: str | torch.device = "cpu"
    ) -> tuple[dict[str, float], np.ndarray]:
        """``({"psnr", "ssim", "lassim", "loss", "psnr_<kernel>"...[, "psnr_x2", "ssim_x2",
        "lassim_x2"]}, preview)`` on the validation windows (module docstring)."""
        rows, preview = self.evaluate(net, device)
        metrics = {
            "psnr": self.summarize(rows, "psnr", scale=SCALE),
            "ssim": self.summarize(rows, "ssim", scale=SCALE),
            "lassim": self.summarize(rows, "lassim", scale=SCALE),
            "loss": self.summarize(rows, "mse", scale=SCALE),
        }
        if len(self.kernels) > 1:
            for k in self.kernels:
                metrics[f"psnr_{k}"] = self.summarize(rows, "psnr", scale=SCALE, kernel=k)
        if self.arch == "msgan":
            for k in ("psnr", "ssim", "lassim"):
                metrics[f"{k}_x2"] = self.summarize(rows, k, scale=2)
            metrics["psnr_both"] = 0.5 * (metrics["psnr"] + metrics["psnr_x2"])
        return metrics, preview

    def describe(self) -> dict[str, Any]:
        """What the recipe trains on and how, for the best weights file's header and the card."""
        return {
            "mode": self.mode,
            "degradation": (
                f"downsampling x{SCALE} by one kernel per patch, drawn from: "
                + "; ".join(_KERNEL_TEXT[k] for k in self.kernels)
                + ". x2 target: antialiased bicubic x2 of HR; per-volume min-max normalisation"
            ),
            "kernels": list(self.kernels),
            "objective": self.objective,
            "train_planes": plane_ids(self.train_planes),
            "val_planes": plane_ids(i["plane"] for i in self._val),
            "val_crop": self.val_crop,
            **({"smooth_share": self.smooth_share} if self.smooth_share else {}),
        }


def _most_structured_window(
    plane: Plane, ch: int, cw: int, background_level: float, max_background: float
) -> tuple[int, int]:
    """Top-left of the ``ch×cw`` window of ``plane`` with the largest mean gradient magnitude
    (σ = 1 px) among those at most ``max_background`` background, on an 8-pixel grid (plus the
    far edges); the centre window when none qualifies. Deterministic: the validation ROI."""
    from scipy.ndimage import gaussian_gradient_magnitude

    h, w = plane.shape_yx
    data = plane.data
    lum = data.mean(axis=2) if plane.rgb else data
    bg = background_mask(plane, background_level)
    grad = gaussian_gradient_magnitude(lum.astype(np.float32), 1.0).astype(np.float64)
    best, where = -1.0, ((h - ch) // 2, (w - cw) // 2)
    ys = sorted(set(range(0, h - ch + 1, 8)) | {h - ch})
    xs = sorted(set(range(0, w - cw + 1, 8)) | {w - cw})
    gi = np.zeros((h + 1, w + 1)); gi[1:, 1:] = grad.cumsum(0).cumsum(1)
    bi = np.zeros((h + 1, w + 1)); bi[1:, 1:] = bg.cumsum(0).cumsum(1)
    for y in ys:
        for x in xs:
            n_bg = bi[y + ch, x + cw] - bi[y, x + cw] - bi[y + ch, x] + bi[y, x]
            if n_bg > max_background * ch * cw:
                continue
            g = gi[y + ch, x + cw] - gi[y, x + cw] - gi[y + ch, x] + gi[y, x]
            if g > best:
                best, where = g, (y, x)
    return where


def _chw(a: np.ndarray) -> np.ndarray:
    """Y×X → 3×Y×X (replicated), Y×X×3 → 3×Y×X; float32, contiguous."""
    a = a[None].repeat(3, axis=0) if a.ndim == 2 else a.transpose(2, 0, 1)
    return np.ascontiguousarray(a, dtype=np.float32)


def _window(data: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """``data[y0:y0+h, x0:x0+w]`` with the parts outside the plane reflected in."""
    H, W = data.shape[:2]
    ya, yb, xa, xb = max(y0, 0), min(y0 + h, H), max(x0, 0), min(x0 + w, W)
    part = data[ya:yb, xa:xb]
    pads = [(ya - y0, y0 + h - yb), (xa - x0, x0 + w - xb)] + [(0, 0)] * (data.ndim - 2)
    if any(p for pair in pads for p in pair):
        part = np.pad(part, pads, mode="reflect" if min(part.shape[:2]) > 1 else "edge")
    return part
