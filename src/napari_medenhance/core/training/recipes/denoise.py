"""Blind Gaussian denoising with DRAN (Sharif, Naqvi, Biswas, "Learning Medical
Image Denoising with Deep Dynamic Residual Attention Network", Mathematics 2020).

Training pairs
--------------
clean = a patch of a real plane in [0, 1] (see :class:`~..patches.PatchSampler`);
noise = N(0, σ²) with σ ~ U(0, ``sigma_max``)/255 drawn per sample (blind: one network for all
levels, as in the paper); input = clean + noise; loss = L1(net(input), noise): the network
predicts the residual noise and the clean estimate is ``input − net(input)`` (paper eq. 12).

* **The input is not clipped to [0, 1].** The residual target must be exactly
  ``input − clean``; clipping would make the noise signal-dependent and one-sided wherever the
  clean image is near 0 or 1 (the dark background of fluorescence and CT, which is a large part
  of this data), teaching the network to brighten dark areas. At inference the engine maps data
  to [0, 1] by the noisy image's own min and max, so the noise in what the network sees is not
  clipped there either.
* **Real images are integers, so a share of the inputs is clipped** (``clip_fraction``): an
  8-bit export, a windowed CT or a dark fluorescence background holds noise cut off at the ends
  of the range, and a network trained only on unclipped noise loses more there than BM3D does.
  For those samples the input is ``clip(clean + noise, 0, 1)`` and the target noise is
  ``input − clean`` (what was actually added), so ``clean = input − net(input)`` stays exact.
* **Intensities are placed anywhere in [0, 1]** (``intensity_aug``): the engine maps an image
  by its own min and max, so a CT whose padding is the minimum arrives with all its tissue in
  a narrow band near 1, a dark fluorescence image near 0. For that share of the samples the
  clean patch becomes ``a·clean + b`` (a ~ U(0.25, 1), b ~ U(0, 1 − a)) and, half the time,
  ``1 − that``; the noise is added afterwards, so the σ stays what it says.
* **Optionally, images are also seen shrunk** (``scale_aug``): for that share of the samples
  the clean patch is a window of up to 3× the patch edge, shrunk to the patch (bilinear,
  anti-aliased) before the noise is added, so the noise stays white at the size the network
  sees. Clinical MR slices of 64–256 pixels, ultrasound and histology at low magnification
  are sharp at the pixel level, while most of the MR pool is 0.5–1 mm template volumes: on the
  fixed split, the 90th percentile of the gradient magnitude per pixel is 0.18 on validation MR
  and 0.055 on training MR, and a network trained on the pool as it is loses to BM3D at low σ
  mostly on edges and texture.
* **Gray planes get the same noise in all three channels.** The engine runs a grayscale image by
  replicating it to three channels, so a noisy gray image arrives with identical noise in each;
  training with independent per-channel noise there would let the network average the channels
  and then fail at inference. RGB planes get independent noise per channel.
* **Optionally, every noise level counts alike** (``sigma_weighted``). A sample's L1 error grows
  with its σ, so under the paper's plain L1 the high-σ samples supply most of the gradient, while
  PSNR, which picks and describes the model, is logarithmic: a 5 % smaller error is worth the
  same 0.4 dB at σ 15 as at σ 50. With the switch on, each sample's L1 is multiplied by
  ``(sigma_max / 2) / max(σ̂, 5/255)`` (σ̂: the standard deviation of its true noise, which for
  a clipped sample is what clipping left of it), so every σ is weighed by its relative error and
  the loss keeps the scale of the plain L1 at σ = sigma_max / 2.
* **Every modality is drawn equally often** (:class:`~..patches.PatchSampler`), unless
  ``modality_weights`` says otherwise: ``{"CT": 2}`` draws CT patches twice as often as those
  of any other modality, for a run that must gain on the modalities where it trails (the ship
  gate averages radiology and microscopy separately) more than where it already leads.

Validation
----------
A fixed set: the central ≤ ``val_crop``² window of every validation plane, with noise drawn
once from ``val_seed`` at σ ∈ ``val_sigmas`` (15, 25, 50 by default, in /255 units). Reported:
PSNR and SSIM (data range 1, output clipped to [0, 1] as the engine delivers it, gray outputs
averaged back to one channel) per σ, averaged first over the planes of each modality and then
over modalities (so ten small MR slices do not outweigh one CT slice), their mean over σ
(``psnr``, ``ssim``: ``psnr`` picks the best checkpoint) and the L1 noise loss (``loss``).
With ``val_clipped`` the same noisy images are validated a second time clipped to [0, 1]
(``psnr_c15``, ...), and ``psnr``/``ssim`` average both ways. A network that asks the engine
for a mirrored border (``reflect_border``, DRAN: 16 px) is validated with it too, so the
numbers that pick and describe a model are the ones a user's planes get.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...metrics import psnr as _psnr
from ...metrics import ssim as _ssim
from ...nets import ARCHITECTURES
from ...nets.dran import set_temperature, temperature_schedule
from ..patches import PatchSampler, Plane, Pool, center_crop, modality_factors
from .base import RecipeBase, evaluating, modality_mean, network_config, plane_ids

__all__ = ["DenoiseRecipe"]

#: Noise level (/255) below which ``sigma_weighted`` stops raising a sample's weight: near-clean
#: samples would otherwise dominate the loss (σ 0.5 would weigh 50× a σ 25 sample).
SIGMA_WEIGHT_FLOOR = 5.0
#: The smallest shrink factor of ``scale_aug``: windows of up to 3× the patch edge.
SCALE_AUG_MIN = 1.0 / 3.0


def _with_mirrored_border(net: torch.nn.Module, x: torch.Tensor, clean: bool = False) -> torch.Tensor:
    """``net(x)`` (``clean``: ``net.denoise(x)``, the clean estimate the inference engine
    returns) with ``x`` (N, C, H, W) grown by the network's ``reflect_border`` mirrored
    pixels on each side and the output cropped back, as the inference engine runs it."""
    run = net.denoise if clean else net
    b = int(getattr(net, "reflect_border", 0) or 0)
    b = min(b, x.shape[-2] - 1, x.shape[-1] - 1)  # torch's reflect pad needs b < size
    if b <= 0:
        return run(x)
    y = run(torch.nn.functional.pad(x, (b, b, b, b), mode="reflect"))
    return y[..., b:-b, b:-b]


class DenoiseRecipe(RecipeBase):
    """DRAN blind Gaussian denoising on a :class:`Pool` of real planes.

    Args:
        pool: training planes (patches are drawn from them) and validation planes (fixed
            centre crops); never the same image in both.
        config: DRAN constructor arguments overriding the paper's defaults (e.g.
            ``{"features": 16, "blocks": 1}`` for a tiny test network). The full
            configuration, defaults included, is what checkpoints and weights record.
        sigma_max: training noise σ is drawn from U(0, sigma_max) in /255 units (paper: 50).
        val_sigmas: validation noise levels in /255 units.
        val_crop: validation planes are centre-cropped to at most this many pixels per side.
        val_seed: seed of the fixed validation noise.
        min_std, max_empty, max_tries: empty-background rejection of the patch sampler
            (:class:`~..patches.PatchSampler`).
        anneal_fraction: the attention temperature anneals 30 → 1 over this fraction of the
            run's steps (10 % → 10,000 of the paper's 100k steps, DRAN's default), then stays 1.
        preview_sigma: noise level of the preview image (the first validation plane).
        clip_fraction: share of the training samples whose noisy input is clipped to [0, 1]
            (module docstring); 0 trains on unclipped noise only.
        val_clipped: also validate on the noisy images clipped to [0, 1].
        intensity_aug: share of the training samples whose clean patch is moved to a random
            place in [0, 1] (and half of them inverted) before the noise (module docstring).
        arch: the network trained (DRAN by default): any registered residual-noise
            architecture (:func:`napari_medenhance.core.tasks.register_architecture`) whose
            ``forward`` predicts the noise and whose ``denoise(x)`` returns the clean image;
            ``config`` overrides its constructor's defaults. The attention temperature is set
            on the dynamic convs it has (none: nothing to anneal).
        sigma_weighted: weigh each sample's L1 by the inverse of its noise level, so that
            every σ counts by its relative error (module docstring); off: the paper's plain L1.
        scale_aug: share of the training samples whose clean patch is a larger window shrunk
            to the patch, by a factor drawn from U(1/3, 1) (module docstring); 0: none, and
            the random stream is the one of a recipe without the option.
        modality_weights: ``{modality: weight}`` of the patch sampler (module docstring):
            a modality of weight 2 is drawn twice as often as one of weight 1 (unnamed: 1).
            None: every modality alike, and the random stream of a recipe without the option.
    """

    task = "denoise"
    arch = "dran"
    primary_metric = "psnr"
    higher_is_better = True
    #: 1: colour planes are scored through ``net.denoise`` (DRAN's chroma path), as the plugin
    #: runs them; 0 scored ``x - net(x)``.
    validation_version = 1

    def __init__(
        self,
        pool: Pool,
        *,
        config: Mapping[str, Any] | None = None,
        sigma_max: float = 50.0,
        val_sigmas: Sequence[float] = (15.0, 25.0, 50.0),
        val_crop: int = 256,
        val_seed: int = 2020,
        min_std: float = 0.005,
        max_empty: float = 0.75,
        max_tries: int = 20,
        anneal_fraction: float = 0.1,
        preview_sigma: float = 25.0,
        clip_fraction: float = 0.0,
        val_clipped: bool = False,
        intensity_aug: float = 0.0,
        arch: str = "dran",
        sigma_weighted: bool = False,
        scale_aug: float = 0.0,
        modality_weights: Mapping[str, float] | None = None,
    ) -> None:
        ctor = ARCHITECTURES.get(str(arch).lower())
        if ctor is None:
            raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
        self.arch = str(arch).lower()
        if not 0.0 <= clip_fraction <= 1.0:
            raise ValueError(f"clip_fraction must be in [0, 1], got {clip_fraction}")
        self._require_planes(pool)
        # not JSON-normalised: passed to the constructor as given (recipe_identity normalises)
        self.config: dict[str, Any] = network_config(ctor, config, self.arch.upper(),
                                                     normalise=False)
        self.pool = pool
        self.sigma_max = float(sigma_max)
        self.val_sigmas = tuple(float(s) for s in val_sigmas)
        self.val_crop = int(val_crop)
        self.val_seed = int(val_seed)
        self.min_std = float(min_std)
        self.max_empty = float(max_empty)
        self.max_tries = int(max_tries)
        self.anneal_fraction = float(anneal_fraction)
        self.clip_fraction = float(clip_fraction)
        self.val_clipped = bool(val_clipped)
        if not 0.0 <= intensity_aug <= 1.0:
            raise ValueError(f"intensity_aug must be in [0, 1], got {intensity_aug}")
        self.intensity_aug = float(intensity_aug)
        self.sigma_weighted = bool(sigma_weighted)
        if not 0.0 <= scale_aug <= 1.0:
            raise ValueError(f"scale_aug must be in [0, 1], got {scale_aug}")
        self.scale_aug = float(scale_aug)
        self.modality_weights = {str(m): float(w) for m, w in (modality_weights or {}).items()}
        if self.modality_weights:  # a typo fails here, not at the first batch
            modality_factors(pool.train, self.modality_weights,
                             known={p.modality for p in pool.train})
        self._preview_index = int(np.argmin([abs(s - preview_sigma) for s in self.val_sigmas]))
        self._samplers: dict[int, PatchSampler] = {}
        self._val = self._prepare_validation()

    # ------------------------------------------------------------------ training
    def anneal_steps(self, total: int) -> int:
        """Steps over which the attention temperature anneals 30 → 1 in a ``total``-step run."""
        if self.anneal_fraction <= 0:  # a run from trained weights: temperature 1 from step 0
            return 0
        return max(1, math.ceil(self.anneal_fraction * total))

    def on_step(self, net: torch.nn.Module, step: int, total: int) -> None:
        """Set every dynamic conv's temperature for 0-based ``step`` (linear 30 → 1, then 1)."""
        set_temperature(net, temperature_schedule(step, anneal_steps=self.anneal_steps(total)))

    def sampler(self, patch: int) -> PatchSampler:
        """The (cached) patch sampler over the training planes for ``patch``-pixel patches."""
        if patch not in self._samplers:
            self._samplers[patch] = PatchSampler(
                self.pool.train,
                patch,
                min_std=self.min_std,
                max_empty=self.max_empty,
                max_tries=self.max_tries,
                modality_weights=self.modality_weights or None,
            )
        return self._samplers[patch]

    def sample_batch(
        self, rng: np.random.Generator, batch: int, patch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noisy, clean)``: float32 ``batch×3×patch×patch``; noisy = clean + N(0, σ²),
        σ ~ U(0, sigma_max)/255 per sample, clipped to [0, 1] for a ``clip_fraction`` share of
        the samples (module docstring)."""
        clean, gray = self.sampler(patch).sample(rng, batch)
        if self.scale_aug > 0:
            self._shrink_some(rng, clean, gray, patch)
        if self.intensity_aug > 0:
            pick = rng.random(batch) < self.intensity_aug
            gain = rng.uniform(0.25, 1.0, size=batch).astype(np.float32)
            offset = (rng.random(batch) * (1.0 - gain)).astype(np.float32)
            invert = rng.random(batch) < 0.5
            moved = clean * gain[:, None, None, None] + offset[:, None, None, None]
            moved[invert] = 1.0 - moved[invert]
            clean[pick] = moved[pick]
        sigma = rng.uniform(0.0, self.sigma_max, size=batch).astype(np.float32) / 255.0
        noise = rng.standard_normal(clean.shape, dtype=np.float32)
        noise[gray, 1:] = noise[gray, :1]
        noise *= sigma[:, None, None, None]
        noisy = clean + noise
        if self.clip_fraction > 0:
            clip = rng.random(batch) < self.clip_fraction
            noisy[clip] = np.clip(noisy[clip], 0.0, 1.0)
        return torch.from_numpy(noisy), torch.from_numpy(clean)

    def _shrink_some(self, rng: np.random.Generator, clean: np.ndarray, gray: np.ndarray,
                     patch: int) -> None:
        """Replace a ``scale_aug`` share of the ``clean`` patches (and their ``gray`` flags) in
        place by windows of ``patch / f`` pixels (f ~ U(1/3, 1), the edge rounded to a multiple
        of 8 so that few samplers are built, and no larger than the largest plane allows)
        shrunk to ``patch`` pixels."""
        pick = np.flatnonzero(rng.random(len(clean)) < self.scale_aug)
        if not pick.size:
            return
        largest = max(min(p.shape_yx) for p in self.pool.train)
        factor = rng.uniform(SCALE_AUG_MIN, 1.0, size=pick.size)
        edges = np.minimum(np.round(patch / factor / 8.0) * 8, largest).astype(int)
        for edge in np.unique(edges):
            if edge <= patch:
                continue
            idx = pick[edges == edge]
            window, window_gray = self.sampler(int(edge)).sample(rng, idx.size)
            small = F.interpolate(torch.from_numpy(window), size=(patch, patch), mode="bilinear",
                                  align_corners=False, antialias=True)
            clean[idx] = small.clamp_(0.0, 1.0).numpy()
            gray[idx] = window_gray

    def loss(
        self, net: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """L1 between the predicted and the true noise ``inputs - targets`` (paper eq. 12),
        per sample weighted by its inverse noise level with ``sigma_weighted``."""
        noise = inputs - targets
        per_sample = (net(inputs) - noise).abs().flatten(1).mean(dim=1)
        l1 = per_sample.mean()
        if not self.sigma_weighted:
            return l1, {"l1": float(l1.detach())}
        level = noise.detach().flatten(1).std(dim=1).clamp_min(SIGMA_WEIGHT_FLOOR / 255.0)
        weighted = (per_sample * ((self.sigma_max / 2.0 / 255.0) / level)).mean()
        return weighted, {"l1": float(l1.detach()), "l1_weighted": float(weighted.detach())}

    @property
    def objective(self) -> dict[str, Any] | None:
        """The loss switch, part of the checkpoint identity when it is on (None: plain L1, so
        the checkpoints of runs made before the switch existed still resume)."""
        if not self.sigma_weighted:
            return None
        return {"loss": "l1", "sigma_weighted": {"reference": self.sigma_max / 2.0,
                                                 "floor": SIGMA_WEIGHT_FLOOR}}

    # ---------------------------------------------------------------- validation
    def _prepare_validation(self) -> list[dict[str, Any]]:
        rng = np.random.default_rng(self.val_seed)
        items = []
        for plane in self.pool.val:
            clean = np.ascontiguousarray(center_crop(plane.data, self.val_crop))
            chw = clean.transpose(2, 0, 1) if plane.rgb else np.broadcast_to(clean, (3, *clean.shape))
            noisy = np.empty((len(self.val_sigmas), *chw.shape), dtype=np.float32)
            for i, s in enumerate(self.val_sigmas):
                n = rng.standard_normal(chw.shape if plane.rgb else chw.shape[1:], dtype=np.float32)
                noisy[i] = chw + n * np.float32(s / 255.0)
            variants = [(False, noisy)]
            if self.val_clipped:
                variants.append((True, np.clip(noisy, 0.0, 1.0)))
            for clipped, x in variants:
                inputs = [self.to_plane(x[i], plane.rgb) for i in range(len(self.val_sigmas))]
                items.append(
                    {
                        "plane": plane,
                        "clipped": clipped,
                        "clean": clean,
                        "clean3": np.ascontiguousarray(chw, dtype=np.float32),
                        "noisy": x,
                        "psnr_input": [_psnr(clean, y, data_range=1.0, rgb=plane.rgb) for y in inputs],
                        "ssim_input": [_ssim(clean, y, data_range=1.0, rgb=plane.rgb) for y in inputs],
                    }
                )
        return items

    def evaluate(
        self, net: torch.nn.Module, device: str | torch.device = "cpu"
    ) -> tuple[list[dict[str, Any]], np.ndarray]:
        """Run the network on the fixed validation set.

        Returns:
            ``(rows, preview)``: one row per plane, σ and input variant with ``name, modality,
            sigma, clipped, psnr, ssim, psnr_input, ssim_input, l1`` (dB, [-1, 1], [0, 1]
            units; ``clipped``: the noisy input was clipped to [0, 1]), and the preview
            (float32 [0, 1], denoised first plane at ``preview_sigma``). The network is put in
            eval mode for the call and restored afterwards.
        """
        device = torch.device(device)
        rows: list[dict[str, Any]] = []
        preview = None
        with evaluating(net):
            for k, item in enumerate(self._val):
                plane: Plane = item["plane"]
                x = torch.from_numpy(item["noisy"]).to(device)
                # The clean estimate as the plugin computes it (DRAN's colour path included),
                # not x - forward(x).
                pred = x - _with_mirrored_border(net, x, clean=True)
                clean3 = torch.from_numpy(item["clean3"]).to(device)
                l1 = (pred - (x - clean3)).abs().mean(dim=(1, 2, 3)).cpu().numpy()
                out = (x - pred).clamp_(0.0, 1.0).cpu().numpy()
                for i, s in enumerate(self.val_sigmas):
                    img = self.to_plane(out[i], plane.rgb)
                    rows.append(
                        {
                            "name": plane.name,
                            "modality": plane.modality,
                            "sigma": s,
                            "clipped": item["clipped"],
                            "psnr": float(_psnr(item["clean"], img, data_range=1.0, rgb=plane.rgb)),
                            "ssim": float(_ssim(item["clean"], img, data_range=1.0, rgb=plane.rgb)),
                            "psnr_input": float(item["psnr_input"][i]),
                            "ssim_input": float(item["ssim_input"][i]),
                            "l1": float(l1[i]),
                        }
                    )
                    if k == 0 and i == self._preview_index:
                        preview = img.astype(np.float32)
        assert preview is not None
        return rows, preview

    @staticmethod
    def summarize(
        rows: Sequence[Mapping[str, Any]], key: str, sigma: float | None = None,
        clipped: bool | None = False,
    ) -> float:
        """Mean of ``key`` over modalities of the per-modality means (rows at ``sigma``, or all;
        unclipped inputs by default, ``clipped=True`` the clipped ones, None both)."""
        return modality_mean(rows, key, lambda r: (sigma is None or r["sigma"] == sigma) and (
            clipped is None or bool(r.get("clipped", False)) == clipped))

    def validate(
        self, net: torch.nn.Module, device: str | torch.device = "cpu"
    ) -> tuple[dict[str, float], np.ndarray]:
        """``({"psnr", "ssim", "loss", "psnr_s15", "ssim_s15", ...}, preview)`` (module docstring)."""
        rows, preview = self.evaluate(net, device)
        metrics: dict[str, float] = {}
        for s in self.val_sigmas:
            tag = f"s{s:g}"
            metrics[f"psnr_{tag}"] = self.summarize(rows, "psnr", s)
            metrics[f"ssim_{tag}"] = self.summarize(rows, "ssim", s)
            if self.val_clipped:
                metrics[f"psnr_c{s:g}"] = self.summarize(rows, "psnr", s, clipped=True)
                metrics[f"ssim_c{s:g}"] = self.summarize(rows, "ssim", s, clipped=True)
        tags = ["s", "c"] if self.val_clipped else ["s"]
        for key in ("psnr", "ssim"):
            metrics[key] = float(np.mean([metrics[f"{key}_{t}{s:g}"] for t in tags
                                          for s in self.val_sigmas]))
        metrics["loss"] = float(np.mean([r["l1"] for r in rows]))
        return metrics, preview

    def describe(self) -> dict[str, Any]:
        """What the recipe trains on and how, for the best weights file's header and the card."""
        return {
            "noise": f"additive Gaussian, sigma ~ U(0, {self.sigma_max:g})/255 per sample, "
            + (f"input clipped to [0, 1] for {self.clip_fraction:.0%} of the samples"
               if self.clip_fraction > 0 else "input not clipped")
            + "; gray planes: same noise in the 3 replicated channels",
            "clip_fraction": self.clip_fraction,
            "intensity_aug": self.intensity_aug,
            "scale_aug": self.scale_aug,
            **({"modality_weights": dict(self.modality_weights)} if self.modality_weights else {}),
            "val_clipped": self.val_clipped,
            "loss": "L1(predicted noise, true noise)" + (
                f", per sample x ({self.sigma_max / 2:g}/255) / max(its noise std, "
                f"{SIGMA_WEIGHT_FLOOR:g}/255)" if self.sigma_weighted else ""),
            "sigma_weighted": self.sigma_weighted,
            "train_planes": plane_ids(self.pool.train),
            "val_planes": plane_ids(self.pool.val),
            "val_sigmas": list(self.val_sigmas),
            "val_crop": self.val_crop,
            "val_seed": self.val_seed,
            "anneal_fraction": self.anneal_fraction,
        }
