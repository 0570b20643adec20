"""Small untrained networks saved as user models, for tests of the plumbing (not of quality)."""

from __future__ import annotations

from pathlib import Path

import torch

from napari_medenhance.core.nets.dpe import DPE
from napari_medenhance.core.nets.srresnet import MSGANGenerator
from napari_medenhance.core.weights import save_weights

TINY_DPE = {"widths": [8, 8, 8]}  # two stride-2 levels, ~6k parameters
TINY_MSGAN = {"features": 8, "blocks": 1, "blocks_x2": 1}


def save_tiny_dpe(path: Path, seed: int = 0) -> DPE:
    """Write a small, untrained DPE to ``path`` (header: arch dpe, task enhance)."""
    torch.manual_seed(seed)
    net = DPE(**TINY_DPE)
    save_weights(path, net, arch="dpe", config=TINY_DPE, meta={"task": "enhance", "name": "tiny"})
    return net.eval()


def save_tiny_msgan_pair(folder: Path, seed: int = 0) -> None:
    """``tiny-x2`` and ``tiny-x4`` in ``folder``: one MS-GAN cut at its ×2 and ×4 heads, as
    ``training/train_sr.py`` exports ``msgan-x2`` / ``msgan-x4``."""
    torch.manual_seed(seed)
    full = MSGANGenerator(**TINY_MSGAN)
    for f in (2, 4):
        cfg = {**TINY_MSGAN, "output_scale": f}
        keys = MSGANGenerator(**cfg).state_dict().keys()
        save_weights(folder / f"tiny-x{f}.safetensors", {k: full.state_dict()[k] for k in keys},
                     arch="msgan", config=cfg, meta={"task": "sr", "name": f"tiny-x{f}"})
