"""Paired training: any task's recipe trained on real aligned LQ / HQ pairs.

:class:`PairedRecipe` wraps a task recipe (denoise, enhance or SR) and swaps only its data: the
real low-quality window replaces the simulated degradation. It lives with the recipes, not with
fine-tuning, because it is a recipe like the others (the loop trains it through the same
protocol); fine-tuning only picks it for ``mode="paired"``.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ... import runtime
from ...metrics import psnr as _psnr
from ...metrics import ssim as _ssim
from ...nets import ARCHITECTURES
from ..paired_data import PairedPatchSampler, PairedPool, center_pair
from .base import RecipeBase, evaluating
from .enhance import percentile_stretch
from .sr import SCALE as SR_SCALE

if TYPE_CHECKING:
    # recipes/__init__ imports this module, so the protocol is only a type here
    from . import Recipe

__all__ = ["PairedRecipe"]


def _restorer(net: torch.nn.Module, task: str) -> torch.nn.Module:
    """What the engine runs for ``net``: [0, 1] in, restored [0, 1] out (zoo's one adapter)."""
    # inference_module only reads the task of its ModelInfo.
    return runtime.inference_module(net, types.SimpleNamespace(task=task))  # type: ignore[arg-type]


class PairedRecipe(RecipeBase):
    """A task recipe trained on real aligned LQ / HQ pairs instead of simulated degradations.

    Everything about the network and the objective is the wrapped recipe's (build, extra
    modules, loss or losses, per-step hooks, value range); only the data change: a batch is the
    real LQ patch and the HQ patch at the same window (:class:`~..paired_data.PairedPatchSampler`:
    same flips / rotations on both, empty HQ background redrawn), mapped to the network's value
    range ([-1, 1] for DPE), and validation runs the network as the engine would on the central
    ≤ ``val_crop``² window of every validation pair and scores it against the HQ: ``psnr`` and
    ``ssim`` (data range 1, output clipped to [0, 1], gray outputs averaged back to one
    channel) and ``loss`` = mean absolute error, averaged over the pairs.

    Args:
        base: the task's recipe, built on the HQ planes (:meth:`PairedPool.hq_pool`); its own
            sampling and validation are not used.
        pairs: the paired train / validation split; ``pairs.scale`` must be the recipe's
            factor (1, or 4 for SR).
        val_crop: HQ pixels per side of a validation window at most.
        min_std, max_empty: the sampler's background test (:class:`~..patches.PatchSampler`).
    """

    primary_metric = "psnr"
    higher_is_better = True

    def __init__(self, base: Recipe, pairs: PairedPool, *, val_crop: int = 256,
                 min_std: float = 0.005, max_empty: float = 0.75) -> None:
        if not pairs.train or not pairs.val:
            raise ValueError("paired training needs training and validation pairs")
        want = SR_SCALE if base.task == "sr" else 1
        if pairs.scale != want:
            raise ValueError(f"{base.task} pairs must have scale {want}; got {pairs.scale}")
        if getattr(base, "input_norm", "none") == "stretch":
            # A model trained on stretched input sees every LQ plane stretched by its own
            # percentiles, as the engine stretches an image (the recipe's input_percentiles).
            pct = tuple(base.input_percentiles)
            pairs = PairedPool(
                train=[dataclasses.replace(p, lq=percentile_stretch(p.lq, *pct)) for p in pairs.train],
                val=[dataclasses.replace(p, lq=percentile_stretch(p.lq, *pct)) for p in pairs.val],
                scale=pairs.scale)
        self.base = base
        self.pairs = pairs
        self.task, self.arch, self.config = base.task, base.arch, base.config
        self.val_crop = int(val_crop)
        self.min_std, self.max_empty = float(min_std), float(max_empty)
        vr = tuple(getattr(ARCHITECTURES.get(self.arch), "value_range", (0.0, 1.0)))
        self._signed = vr == (-1.0, 1.0)
        self._samplers: dict[int, PairedPatchSampler] = {}
        self._val = [(p, *center_pair(p, self.val_crop)) for p in pairs.val]

    @property
    def objective(self) -> dict[str, Any]:
        """The wrapped recipe's objective, marked as trained on real pairs (checkpoint identity:
        a simulated-mode checkpoint is not resumed as a paired run, or vice versa)."""
        return {"base": getattr(self.base, "objective", None), "pairs": "real",
                "base_recipe": type(self.base).__name__, "scale": self.pairs.scale}

    def build(self) -> torch.nn.Module:
        return self.base.build()

    def build_extras(self) -> dict[str, torch.nn.Module]:
        fn = getattr(self.base, "build_extras", None)
        return dict(fn()) if callable(fn) else {}

    def on_step(self, net: torch.nn.Module, step: int, total: int) -> None:
        self.base.on_step(net, step, total)

    def loss(self, net: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        return self.base.loss(net, inputs, targets)

    def losses(self, net: torch.nn.Module, extras: Mapping[str, torch.nn.Module],
               inputs: torch.Tensor, targets: torch.Tensor
               ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        return self.base.losses(net, extras, inputs, targets)  # type: ignore[attr-defined]

    def sampler(self, patch: int) -> PairedPatchSampler:
        """The (cached) paired sampler for ``patch``-pixel HQ patches."""
        if patch not in self._samplers:
            self._samplers[patch] = PairedPatchSampler(
                self.pairs.train, patch, min_std=self.min_std, max_empty=self.max_empty)
        return self._samplers[patch]

    def sample_batch(self, rng: np.random.Generator, batch: int, patch: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(LQ, HQ)``: ``batch×3×(patch/scale)²`` and ``batch×3×patch²``, in the network's
        value range."""
        lq, hq = self.sampler(patch).sample(rng, batch)
        if self._signed:
            lq, hq = lq * 2.0 - 1.0, hq * 2.0 - 1.0
        return torch.from_numpy(lq), torch.from_numpy(hq)

    def validate(self, net: torch.nn.Module, device: str | torch.device = "cpu"
                 ) -> tuple[dict[str, float], np.ndarray]:
        """``({"psnr", "ssim", "loss"}, preview)``; preview: the output on the first pair."""
        device = torch.device(device)
        run = _restorer(net, self.task)
        rows, preview = [], None
        # The loop validates under its own guard; this one keeps a direct call exact too.
        with evaluating(net):
            for pair, lq, hq in self._val:
                x = lq.transpose(2, 0, 1) if pair.rgb else np.broadcast_to(lq, (3, *lq.shape))
                y = run(torch.from_numpy(np.ascontiguousarray(x))[None].to(device))[0]
                y = y.clamp(0.0, 1.0).cpu().numpy()
                out = (y.transpose(1, 2, 0) if pair.rgb else y.mean(axis=0)).astype(np.float32)
                rows.append((_psnr(hq, out, data_range=1.0, rgb=pair.rgb),
                             _ssim(hq, out, data_range=1.0, rgb=pair.rgb),
                             float(np.abs(out - hq).mean())))
                if preview is None:
                    preview = np.ascontiguousarray(out)
        m = np.asarray(rows, dtype=np.float64).mean(axis=0)
        assert preview is not None
        return {"psnr": float(m[0]), "ssim": float(m[1]), "loss": float(m[2])}, preview

    def describe(self) -> dict[str, Any]:
        """The wrapped recipe's loss description and the pairs, for the weights header / card."""
        base = getattr(self.base, "describe", None)
        keep = ("loss", "objective", "mode", "discriminator", "input_norm", "input_percentiles")
        info = {k: v for k, v in (base() if callable(base) else {}).items() if k in keep}
        info.update(
            pairs=f"real aligned LQ/HQ pairs (scale {self.pairs.scale}); no simulated degradation",
            train_planes=[p.name for p in self.pairs.train],
            val_planes=[p.name for p in self.pairs.val],
            val_crop=self.val_crop,
            validation="PSNR / SSIM of the output vs the HQ on the central validation windows",
        )
        return info
