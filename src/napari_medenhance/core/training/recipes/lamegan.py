"""LaMEGAN: unpaired enhancement, CycleGAN + a Laplacian structure-preserving loss (Q. H. Cap,
A. Fukuda, H. Iyatomi, "A Practical Framework for Unsupervised Structure Preservation Medical
Image Enhancement").

Data
----
Two pools of real planes that do **not** correspond: ``lq`` (low-quality images, domain X) and
``hq`` (high-quality images, domain Y). A batch is ``batch`` random LQ patches and ``batch``
random HQ patches, each drawn by its own :class:`~..patches.PatchSampler` (modality balanced,
empty background rejected, the 8 flips / rotations), gray planes replicated to 3 channels,
mapped to DPE's [-1, 1]. The loop's ``(inputs, targets)`` are ``(LQ patches, HQ patches)``.

Networks
--------
* the loop's network: :class:`~napari_medenhance.core.nets.cycle.CycleGenerators` (arch
  ``cycle_dpe``): G: X → Y (its ``forward``) and F: Y → X, two DPE generators of one config
  (``config``, e.g. smaller ``widths``); one Adam over both, as CycleGAN's.
* extras: ``d_hq`` = D_Y (judges HQ images) and ``d_lq`` = D_X (judges LQ images), 70×70
  PatchGANs (:class:`~napari_medenhance.core.nets.patchgan.PatchGAN`), each with its own Adam.
* Adam betas (0.5, 0.999), CycleGAN's (:attr:`LaMEGANRecipe.betas`); the loop's learning-rate
  schedule (cosine) replaces CycleGAN's constant-then-linear one; CycleGAN's rate is 2e-4.

Objective (paper eq. 2-7), all images in [-1, 1]
-----------------------------------------------
::

    y' = G(x), x' = F(y)                     (x: LQ patches, y: HQ patches)
    L_net  = mean (D_Y(y') − 1)²  +  mean (D_X(x') − 1)²                 LSGAN, generators
           + β · ( mean |F(y') − x|  +  mean |G(x') − y| )               cycle, β = 10
           + λ · ( S(y', x)  +  S(x', y) )                               structure, λ = 0.25
           [+ γ · ( mean |G(y) − y|  +  mean |F(x) − x| )]               identity, γ = 0: off
    L_d_hq = ½ · ( mean (D_Y(y) − 1)²  +  mean D_Y(y')² )                LSGAN, D_Y
    L_d_lq = ½ · ( mean (D_X(x) − 1)²  +  mean D_X(x')² )                LSGAN, D_X

    S(a, b) = mean |φ(LP_l(a)) − φ(LP_l(b))| · s_φ

* ``LP_l``: Laplacian band ``l`` (default 3) of the image's gray version, with OpenCV
  pyrDown / pyrUp semantics (:func:`..laplacian.laplacian_band`, the torch twin of the band
  the LaSSIM metric uses). Gray = scikit-image's ``rgb2gray`` weights (0.2125, 0.7154, 0.0721),
  LaSSIM's; the authors' code uses torchvision's Grayscale (0.299, 0.587, 0.114). Gray planes
  (three equal channels) give the same band either way.
* ``φ``: VGG16 up to its 2nd max-pool (``pool2``, 128 channels at 1/4 of the band's size),
  the paper's layer (the authors' code uses VGG-19, whose first two blocks have the same
  layout). As in the authors' code, the signed band is fed as if it were a [-1, 1] image
  replicated to three channels (band value v → pixel (v + 1)/2 in [0, 1]; 0 = mid-gray).
* ``s_φ`` = 1 / (255 · 0.226): our VGG16 takes caffe inputs (0–255 minus the mean) where the
  authors' torchvision VGG takes (x − mean) / std with std ≈ 0.226, so its activations are about
  255 · 0.226 ≈ 58 times larger; s_φ puts the term back on the scale the paper's λ = 0.25 was
  tuned for.
* Sharing: D_Y(y') is computed once and used by both the generator and the D_Y loss; the loop
  back-propagates each loss into its own module only, so this equals CycleGAN's
  ``D_Y(y'.detach())`` for D_Y's gradient while saving a forward pass. The loop updates all
  modules after all losses are computed (a simultaneous update; CycleGAN updates G first).
* **No 50-image history buffer.** CycleGAN feeds its discriminators from a pool of 50 past
  fakes. It is left out: the buffer would be training state outside the modules and RNGs that
  the loop checkpoints, and resumed runs would no longer equal uninterrupted ones. The
  discriminators see the current fakes.

Validation (no paired ground truth)
-----------------------------------
Fixed sets: the central ≤ ``val_crop``² window of every LQ validation plane, and every HQ
validation plane whole. G runs on each LQ crop (output clipped to [0, 1] as the engine
delivers it; gray planes averaged back to one channel). Metrics:

* ``lassim``: LaSSIM(LQ crop, G(LQ crop)) at ``level`` (or the deepest level that fits the
  crop), averaged over planes: structure kept from the input (1 = identical structure).
* ``hq_distance``: how far the intensity distribution of the outputs is from the HQ planes':
  the 1-D Wasserstein distance (mean absolute difference of 256 quantiles, [0, 1] units)
  between all output pixels and all HQ validation pixels, per channel (gray replicated to
  three), averaged over channels. ``input_hq_distance`` is the same for the LQ crops themselves
  (a constant: where training starts from).
* ``mean_diff`` / ``std_diff``: mean and standard deviation of the outputs minus those of the
  HQ planes (all channels pooled, [0, 1] units; signed).
* ``score`` = ``lassim − hq_distance / input_hq_distance``: structure kept minus the share of
  the LQ → HQ intensity gap still left (0 for the identity map; a perfect translation that
  keeps all structure scores 1). **``score`` picks ``best.safetensors``** (higher is better):
  ``lassim`` alone would favour doing nothing and ``hq_distance`` alone would favour
  hallucinated but well-exposed images.

Export
------
:func:`export_generator` writes G alone as a standard ``dpe`` weights file (task
``"enhance"``), from the network, ``last.safetensors`` or ``best.safetensors``; the registry
lists it as an enhance model and the Enhance widget / ``napari_medenhance.enhance`` run it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...metrics import lassim as _lassim
from ...metrics import max_lassim_level
from ...nets import build as _build
from ...nets.cycle import CycleGenerators
from ...nets.dpe import DPE
from ...nets.patchgan import PatchGAN
from ...weights import WeightsError, load_into, read_header, save_weights
from ..checkpoint import CHECKPOINT_KIND, load_checkpoint
from ..laplacian import band_shape, laplacian_band
from ..patches import PatchSampler, Plane, Pool, center_crop
from .base import RecipeBase, evaluating, json_normalised, network_config, plane_ids

__all__ = [
    "LaMEGANRecipe",
    "StructureLoss",
    "export_generator",
    "CYCLE_WEIGHT",
    "STRUCTURE_WEIGHT",
    "STRUCTURE_FEATURE_SCALE",
]

#: β of the paper (eq. 3): weight of the cycle-consistency L1.
CYCLE_WEIGHT = 10.0
#: λ of the paper (eq. 2): weight of the structure-preserving loss.
STRUCTURE_WEIGHT = 0.25
#: s_φ: VGG16 (caffe preprocessing) features → the scale of torchvision-normalised VGG inputs.
STRUCTURE_FEATURE_SCALE = 1.0 / (255.0 * 0.226)
#: CycleGAN's Adam betas.
CYCLEGAN_BETAS = (0.5, 0.999)
#: scikit-image ``rgb2gray`` (ITU-R 709 luma), the LaSSIM metric's gray conversion.
GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)
#: VGG16 layer of the structure loss: after the 2nd max-pool.
STRUCTURE_LAYER = "pool2"
#: Quantiles compared by the validation's intensity distance.
_QUANTILES = 256
_ARCH = "cycle_dpe"


class StructureLoss(nn.Module):
    """LaMEGAN's structure term ``S(a, b) = mean |φ(LP_l(a)) − φ(LP_l(b))| · s_φ`` (module
    docstring), differentiable in both arguments.

    Args:
        features: the feature network, called as ``features(rgb_01)[STRUCTURE_LAYER]``
            (default: the shipped ``VGG16Features(("pool2",))``).
        level: Laplacian level ``l`` (3 = 1/8 resolution).
        feature_scale: ``s_φ``.

    ``forward(a, b)``: two B×3×H×W tensors in [-1, 1] → scalar. Needs a band of at least 4×4
    (two 2×2 max-pools), i.e. H, W >= :meth:`min_size`.
    """

    def __init__(
        self,
        features: nn.Module | None = None,
        *,
        level: int = 3,
        feature_scale: float = STRUCTURE_FEATURE_SCALE,
    ) -> None:
        super().__init__()
        if int(level) < 0:
            raise ValueError(f"level must be >= 0, got {level}")
        if features is None:
            from ...nets.vgg import VGG16Features

            features = VGG16Features((STRUCTURE_LAYER,))
        self.features = features
        self.level = int(level)
        self.feature_scale = float(feature_scale)
        self.register_buffer(
            "gray", torch.tensor(GRAY_WEIGHTS, dtype=torch.float32).view(1, 3, 1, 1),
            persistent=False,
        )

    def min_size(self) -> int:
        """Smallest image side whose level-``l`` band survives two 2×2 max-pools (25 for l=3)."""
        n = 1
        while min(band_shape((n, n), self.level)) < 4:
            n += 1
        return n

    def band(self, x: torch.Tensor) -> torch.Tensor:
        """The level-``l`` band of the gray image, B×1×h×w, in x's [-1, 1] units."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"StructureLoss expects B×3×H×W images in [-1, 1]; got {tuple(x.shape)}"
            )
        gray = (x * self.gray.to(x.dtype)).sum(dim=1, keepdim=True)
        return laplacian_band(gray, self.level)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``φ(LP_l(x)) · s_φ``: the band read as a [-1, 1] image, 3 channels, into VGG16."""
        if min(x.shape[-2:]) < self.min_size():
            raise ValueError(
                f"images of {tuple(x.shape[-2:])} pixels are too small for the structure loss "
                f"at Laplacian level {self.level} (its band must be at least 4×4 for VGG16 up "
                f"to pool2): use patches of at least {self.min_size()} pixels or a lower level"
            )
        img = ((self.band(x) + 1.0) * 0.5).expand(-1, 3, -1, -1)
        return self.features(img)[STRUCTURE_LAYER] * self.feature_scale

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape:
            raise ValueError(f"StructureLoss needs two images of one shape; got {tuple(a.shape)} "
                             f"and {tuple(b.shape)}")
        return (self.embed(a) - self.embed(b)).abs().mean()


def _lsgan(pred: torch.Tensor, target: float) -> torch.Tensor:
    return ((pred - target) ** 2).mean()


def _quantiles(values: np.ndarray) -> np.ndarray:
    """``_QUANTILES`` mid-point quantiles of a 1-D sample (float64)."""
    q = (np.arange(_QUANTILES) + 0.5) / _QUANTILES
    return np.quantile(np.asarray(values, dtype=np.float64), q)


def _channels(plane: np.ndarray) -> np.ndarray:
    """Y×X or Y×X×3 → 3×N pixel values (gray replicated, as the networks see it)."""
    if plane.ndim == 2:
        flat = plane.reshape(1, -1)
        return np.repeat(flat, 3, axis=0)
    return plane.reshape(-1, 3).T


def _distance(a: list[np.ndarray], ref_q: np.ndarray) -> float:
    """Wasserstein-1 between the pooled channels of planes ``a`` and the quantiles ``ref_q``
    (3×Q), averaged over the three channels ([0, 1] units)."""
    pooled = np.concatenate([_channels(p) for p in a], axis=1)
    return float(np.mean([np.abs(_quantiles(pooled[c]) - ref_q[c]).mean() for c in range(3)]))


class LaMEGANRecipe(RecipeBase):
    """LaMEGAN on two unpaired pools (module docstring).

    Args:
        lq: low-quality planes (domain X): ``train`` for patches, ``val`` for the fixed
            validation crops (never the same image in both).
        hq: high-quality planes (domain Y), unrelated to ``lq`` (unpaired): ``train`` for
            patches, ``val`` for the reference intensity statistics.
        config: DPE constructor arguments of both generators (e.g. ``{"widths": [16, 24, 32,
            40, 48]}`` for a lighter network); checkpoints and the exported G record them.
        cycle_weight: β (10). structure_weight: λ (0.25). identity_weight: γ (0, the paper's:
            no identity loss).
        level: Laplacian level of the structure loss and of the validation LaSSIM (3).
        feature_scale: s_φ of the structure loss.
        features: the structure loss's feature network (default: shipped VGG16 up to pool2).
        disc_config: :class:`PatchGAN` arguments of both discriminators (e.g. smaller
            ``widths`` in tests).
        betas: Adam betas of all four networks (CycleGAN's (0.5, 0.999)).
        init_generator: a ``dpe`` enhance weights file to start G from (e.g. a shipped or
            earlier model; must have this ``config``); F and the discriminators start fresh.
            Used for fresh runs only (a resumed run restores its checkpoint).
        val_crop: LQ validation planes are centre-cropped to at most this many pixels per side.
        min_std, max_empty: empty-background rejection of the patch samplers.

    Raises:
        ValueError: empty pools, unknown config keys, negative weights.
    """

    task = "enhance"
    arch = _ARCH
    primary_metric = "score"
    higher_is_better = True

    def __init__(
        self,
        lq: Pool,
        hq: Pool,
        *,
        config: Mapping[str, Any] | None = None,
        cycle_weight: float = CYCLE_WEIGHT,
        structure_weight: float = STRUCTURE_WEIGHT,
        identity_weight: float = 0.0,
        level: int = 3,
        feature_scale: float = STRUCTURE_FEATURE_SCALE,
        features: nn.Module | None = None,
        disc_config: Mapping[str, Any] | None = None,
        betas: tuple[float, float] = CYCLEGAN_BETAS,
        init_generator: str | os.PathLike | None = None,
        val_crop: int = 256,
        min_std: float = 0.005,
        max_empty: float = 0.75,
    ) -> None:
        for what, pool in (("lq", lq), ("hq", hq)):
            if not isinstance(pool, Pool):
                raise ValueError(f"{what} must be a Pool of planes; got {type(pool).__name__}")
            self._require_planes(pool, what)
        self.config: dict[str, Any] = network_config(DPE, config, "DPE")
        self.disc_config: dict[str, Any] = network_config(PatchGAN, disc_config, "PatchGAN")
        for name, w in (("cycle_weight", cycle_weight), ("structure_weight", structure_weight),
                        ("identity_weight", identity_weight)):
            if not float(w) >= 0:
                raise ValueError(f"{name} must be >= 0, got {w}")
        self.cycle_weight = float(cycle_weight)
        self.structure_weight = float(structure_weight)
        self.identity_weight = float(identity_weight)
        if int(level) < 0:
            raise ValueError(f"level must be >= 0, got {level}")
        self.level = int(level)
        if len(tuple(betas)) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), e.g. (0.5, 0.999); got {betas}")
        self.betas = (float(betas[0]), float(betas[1]))
        # The VGG16 file is only read when the term is on.
        self.structure = (
            StructureLoss(features, level=self.level, feature_scale=feature_scale)
            if self.structure_weight > 0 else None
        )
        self.feature_scale = float(feature_scale)
        self.init_generator = None if init_generator is None else Path(init_generator)
        if self.init_generator is not None:
            read_header(self.init_generator, expected_arch="dpe")  # fail now, not mid-run
        self.lq, self.hq = lq, hq
        self.val_crop = int(val_crop)
        self.min_std = float(min_std)
        self.max_empty = float(max_empty)
        self._samplers: dict[int, tuple[PatchSampler, PatchSampler]] = {}
        self._val = self._prepare_validation()

    # ------------------------------------------------------------------ identity
    @property
    def objective(self) -> dict[str, Any]:
        """The loss switches, part of the checkpoint identity (a run cannot change them)."""
        return json_normalised({
            "gan": "lsgan",
            "cycle_weight": self.cycle_weight,
            "structure_weight": self.structure_weight,
            "identity_weight": self.identity_weight,
            "structure_level": self.level if self.structure_weight > 0 else None,
            "structure_layer": STRUCTURE_LAYER if self.structure_weight > 0 else None,
            "feature_scale": self.feature_scale if self.structure_weight > 0 else None,
            "gray_weights": list(GRAY_WEIGHTS) if self.structure_weight > 0 else None,
            "history_buffer": 0,
            "betas": list(self.betas),
            "discriminator": self.disc_config,
        })

    # ------------------------------------------------------------------ training
    def build(self) -> CycleGenerators:
        """Fresh G and F (:attr:`config`); G loaded from ``init_generator`` when given."""
        net = super().build()
        if self.init_generator is not None:
            load_into(net.g, self.init_generator, strict=True, expected_arch="dpe")
        return net

    def build_extras(self) -> dict[str, nn.Module]:
        """``{"d_hq": D_Y, "d_lq": D_X}``: two 70×70 PatchGANs."""
        return {"d_hq": _build("patchgan", **self.disc_config),
                "d_lq": _build("patchgan", **self.disc_config)}

    def min_patch(self) -> int:
        """Smallest patch the discriminators and the structure loss accept."""
        need = PatchGAN(**self.disc_config).min_input()
        if self.structure is not None:
            need = max(need, self.structure.min_size())
        return need

    def samplers(self, patch: int) -> tuple[PatchSampler, PatchSampler]:
        """The (cached) LQ and HQ patch samplers for ``patch``-pixel patches."""
        if patch not in self._samplers:
            need = self.min_patch()
            if patch < need:
                raise ValueError(
                    f"patch {patch} is too small for LaMEGAN (the 70×70 PatchGAN and the level-"
                    f"{self.level} structure loss need at least {need} pixels); use patch >= "
                    f"{need} (CycleGAN trains on 256)"
                )
            self._samplers[patch] = tuple(  # type: ignore[assignment]
                PatchSampler(pool.train, patch, min_std=self.min_std, max_empty=self.max_empty)
                for pool in (self.lq, self.hq)
            )
        return self._samplers[patch]

    def sample_batch(
        self, rng: np.random.Generator, batch: int, patch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(LQ patches, HQ patches)``: float32 ``batch×3×patch×patch``, [-1, 1], unpaired."""
        lq_s, hq_s = self.samplers(patch)
        x, _ = lq_s.sample(rng, batch)
        y, _ = hq_s.sample(rng, batch)
        return torch.from_numpy(x * 2.0 - 1.0), torch.from_numpy(y * 2.0 - 1.0)

    def loss(
        self, net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Not used: LaMEGAN always trains discriminators (the loop calls :meth:`losses`)."""
        raise ValueError(
            "LaMEGAN trains two discriminators next to its generators: the training loop calls "
            "losses() with the modules from build_extras()"
        )

    def losses(
        self,
        net: nn.Module,
        extras: Mapping[str, nn.Module],
        inputs: torch.Tensor,
        targets: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """``({"net": L_net, "d_hq": L_d_hq, "d_lq": L_d_lq}, logs)`` (module docstring)."""
        x, y = inputs, targets
        d_y, d_x = extras["d_hq"], extras["d_lq"]
        fake_y = net.g(x)
        fake_x = net.f(y)
        rec_x = net.f(fake_y)
        rec_y = net.g(fake_x)
        # One discriminator pass on the fakes serves both losses (module docstring).
        p_fake_y, p_fake_x = d_y(fake_y), d_x(fake_x)
        adv = _lsgan(p_fake_y, 1.0) + _lsgan(p_fake_x, 1.0)
        cycle = (rec_x - x).abs().mean() + (rec_y - y).abs().mean()
        total = adv + self.cycle_weight * cycle
        logs = {"adv": float(adv.detach()), "cycle": float(cycle.detach())}
        if self.structure is not None:
            self.structure.to(x.device)
            structure = self.structure(fake_y, x) + self.structure(fake_x, y)
            total = total + self.structure_weight * structure
            logs["structure"] = float(structure.detach())
        if self.identity_weight > 0:
            ident = (net.g(y) - y).abs().mean() + (net.f(x) - x).abs().mean()
            total = total + self.identity_weight * ident
            logs["identity"] = float(ident.detach())
        d_hq = 0.5 * (_lsgan(d_y(y), 1.0) + _lsgan(p_fake_y, 0.0))
        d_lq = 0.5 * (_lsgan(d_x(x), 1.0) + _lsgan(p_fake_x, 0.0))
        logs.update({"g_total": float(total.detach()), "d_hq": float(d_hq.detach()),
                     "d_lq": float(d_lq.detach())})
        return {"net": total, "d_hq": d_hq, "d_lq": d_lq}, logs

    # ---------------------------------------------------------------- validation
    def _prepare_validation(self) -> dict[str, Any]:
        items = []
        for plane in self.lq.val:
            crop = np.ascontiguousarray(center_crop(plane.data, self.val_crop), dtype=np.float32)
            chw = crop.transpose(2, 0, 1) if plane.rgb else np.broadcast_to(crop, (3, *crop.shape))
            items.append({
                "plane": plane,
                "lq": crop,
                "input": np.ascontiguousarray(chw * 2.0 - 1.0, dtype=np.float32),
                "level": min(self.level, max_lassim_level(crop.shape[:2])),
            })
        hq_pooled = np.concatenate([_channels(p.data) for p in self.hq.val], axis=1)
        hq_q = np.stack([_quantiles(hq_pooled[c]) for c in range(3)])
        lq_planes = [it["lq"] for it in items]
        return {
            "items": items,
            "hq_q": hq_q,
            "hq_mean": float(hq_pooled.mean()),
            "hq_std": float(hq_pooled.std()),
            "input_distance": _distance(lq_planes, hq_q),
        }

    def evaluate(
        self, net: nn.Module, device: str | torch.device = "cpu"
    ) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
        """G on every LQ validation crop: ``(rows, outputs)``; a row per plane with ``name,
        modality, lassim`` (NaN when the crop is smaller than 7×7), outputs float32 [0, 1]
        (Y×X or Y×X×3). The network's mode is restored afterwards."""
        device = torch.device(device)
        rows, outs = [], []
        with evaluating(net):
            for item in self._val["items"]:
                plane: Plane = item["plane"]
                x = torch.from_numpy(item["input"][None]).to(device)
                y = ((net(x)[0] + 1.0) * 0.5).clamp_(0.0, 1.0).cpu().numpy()
                out = self.to_plane(y, plane.rgb).astype(np.float32)
                lv = item["level"]
                rows.append({
                    "name": plane.name,
                    "modality": plane.modality,
                    "lassim": float(_lassim(item["lq"], out, level=lv, rgb=plane.rgb))
                    if lv >= 0 else float("nan"),
                })
                outs.append(out)
        return rows, outs

    def validate(
        self, net: nn.Module, device: str | torch.device = "cpu"
    ) -> tuple[dict[str, float], np.ndarray]:
        """``({"score", "lassim", "hq_distance", "input_hq_distance", "mean_diff",
        "std_diff"}, preview)`` (module docstring); preview: G on the first LQ crop."""
        rows, outs = self.evaluate(net, device)
        val = self._val
        lassim = float(np.nanmean([r["lassim"] for r in rows])) if any(
            np.isfinite(r["lassim"]) for r in rows) else float("nan")
        dist = _distance(outs, val["hq_q"])
        pooled = np.concatenate([_channels(o) for o in outs], axis=1)
        # max(): an LQ set already at the HQ statistics would make the ratio explode.
        ratio = dist / max(val["input_distance"], 1e-3)
        metrics = {
            "score": lassim - ratio,
            "lassim": lassim,
            "hq_distance": dist,
            "input_hq_distance": val["input_distance"],
            "mean_diff": float(pooled.mean()) - val["hq_mean"],
            "std_diff": float(pooled.std()) - val["hq_std"],
        }
        return metrics, outs[0]

    def describe(self) -> dict[str, Any]:
        """What the recipe trains on and how, for the best weights file's header and the card."""
        return {
            "method": "LaMEGAN (CycleGAN, LSGAN, + Laplacian-band VGG16 structure loss), "
                      "unpaired",
            "objective": self.objective,
            "generators": {"arch": "dpe", "config": self.config},
            "init_generator": str(self.init_generator) if self.init_generator else None,
            "lq_train_planes": plane_ids(self.lq.train),
            "lq_val_planes": plane_ids(self.lq.val),
            "hq_train_planes": plane_ids(self.hq.train),
            "hq_val_planes": plane_ids(self.hq.val),
            "val_crop": self.val_crop,
            "selection": "score = lassim - hq_distance / input_hq_distance (higher is better)",
        }


# --------------------------------------------------------------------------------- export


def _dpe_config(net: DPE) -> dict[str, Any]:
    return {"in_channels": int(net.in_channels), "widths": [int(w) for w in net.widths],
            "gate_slope": float(net.gates[0].act.negative_slope)}


def _generator_from_file(path: Path) -> tuple[DPE, dict[str, Any], dict[str, Any]]:
    """``(G, its DPE config, training facts for the card)`` from a checkpoint or weights file."""
    header = read_header(path)
    meta = header["meta"]
    if meta.get("kind") == CHECKPOINT_KIND:
        ckpt = load_checkpoint(path)
        if ckpt.identity["arch"] != _ARCH:
            raise WeightsError(
                f"{path}: a training checkpoint of arch {ckpt.identity['arch']!r}, not a LaMEGAN "
                f"run ({_ARCH!r}); pass the last.safetensors or best.safetensors of a LaMEGAN run"
            )
        net = CycleGenerators(**ckpt.identity["config"])
        net.load_state_dict(ckpt.model, strict=True)
        facts = {"step": ckpt.step, "total": ckpt.total, "from": "checkpoint",
                 "objective": ckpt.identity.get("objective")}
        return net.g, dict(net.config), facts
    if header["arch"] == _ARCH:
        net = CycleGenerators(**header["config"])
        load_into(net, path, strict=True, expected_arch=_ARCH)
        facts = {k: meta[k] for k in ("step", "total", "metrics", "primary_metric", "training")
                 if k in meta}
        facts["from"] = "best"
        return net.g, dict(net.config), facts
    if header["arch"] == "dpe":
        g = DPE(**header["config"])
        load_into(g, path, strict=True, expected_arch="dpe")
        return g, _dpe_config(g), {k: meta[k] for k in ("step", "metrics", "training") if k in meta}
    raise WeightsError(
        f"{path}: weights of arch {header['arch']!r}; export_generator takes a LaMEGAN "
        f"checkpoint or weights file ({_ARCH!r}) or a 'dpe' generator"
    )


def export_generator(
    net_or_checkpoint: nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    *,
    name: str | None = None,
    meta: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write LaMEGAN's G (LQ → HQ) alone as a standard enhance model (arch ``"dpe"``).

    Args:
        net_or_checkpoint: a :class:`CycleGenerators` (the loop's network), a :class:`DPE`
            (G itself), or the path of a LaMEGAN run's ``last.safetensors`` (checkpoint) or
            ``best.safetensors`` (weights, arch ``cycle_dpe``).
        path: destination ``.safetensors`` (its folder must exist); replaced atomically.
        name: the model's name in the header (what the registry shows for a file given by
            path; a registered copy takes its file name, see ``zoo.save_user_model``).
        meta: more header metadata (the model card: data, steps, ...); ``task`` may only be
            ``"enhance"``.
        dtype: store floats in this dtype (e.g. ``torch.float16`` halves the file).

    Returns:
        The path written. Its header: arch ``"dpe"``, the generator's DPE config, meta
        ``task="enhance"``, ``name``, ``method="LaMEGAN"`` and, from a file, its training
        facts (``step``, validation ``metrics``...) under ``lamegan``.

    Raises:
        ValueError: a module of another kind, a ``meta`` task other than enhance.
        WeightsError / CheckpointError: a file that is not a LaMEGAN checkpoint or weights file.
    """
    meta = dict(meta or {})
    if meta.get("task", "enhance") != "enhance":
        raise ValueError(
            f"a LaMEGAN generator is an 'enhance' model; meta says task {meta['task']!r}"
        )
    facts: dict[str, Any] = {}
    if isinstance(net_or_checkpoint, CycleGenerators):
        g, config = net_or_checkpoint.g, dict(net_or_checkpoint.config)
    elif isinstance(net_or_checkpoint, DPE):
        g, config = net_or_checkpoint, _dpe_config(net_or_checkpoint)
    elif isinstance(net_or_checkpoint, (str, os.PathLike)):
        g, config, facts = _generator_from_file(Path(net_or_checkpoint))
    else:
        raise ValueError(
            f"export_generator takes a CycleGenerators or DPE network or the path of a LaMEGAN "
            f"checkpoint / weights file; got {type(net_or_checkpoint).__name__}"
        )
    header: dict[str, Any] = {"task": "enhance", "method": "LaMEGAN"}
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name must be a non-empty string; got {name!r}")
        header["name"] = name
    if facts:
        header["lamegan"] = json_normalised(facts)
    header.update(meta)
    return save_weights(path, g, arch="dpe", config=config, meta=header, dtype=dtype)
