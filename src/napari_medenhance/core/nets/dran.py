"""DRAN: Dynamic Residual Attention Network for medical image denoising.

Sharif et al., "Learning Medical Image Denoising with Deep Dynamic Residual
Attention Network", Mathematics 2020 (section 3.1).

Architecture (defaults)
-----------------------
input conv3×3 3→64 (no bias) + ReLU
→ 3 distinct DRABs, each:  y = body(x) + noise_gate(x)
     body       = 5 × [DynamicConv2d 64→64 3×3 (K=4, bias) → BatchNorm2d → ReLU]
     noise_gate = LeakyReLU_0.1(conv_g(x)) ⊙ sigmoid(conv_f(x)),  conv_g, conv_f: 3×3 64→64, bias
→ output conv3×3 64→3 (no bias) + tanh  =  predicted noise n in (-1, 1)
clean estimate = input − n.

Parameter count (default configuration) = 2,458,944, the paper's figure
-----------------------------------------------------------------------
- input conv:        3·64·3·3                                     =     1,728
- one DynamicConv2d: kernels 4·64·64·3·3 = 147,456
                     biases  4·64        =     256
                     attention 1×1 64→16 = 1,024, 1×1 16→4 = 64  =   148,800
- one BatchNorm2d:   γ, β 2·64 (running stats are buffers)        =       128
- one DRAB body:     5 · (148,800 + 128)                          =   744,640
- one noise gate:    2 · (64·64·3·3 + 64)                         =    73,856
- one DRAB:          744,640 + 73,856                             =   818,496
- three DRABs:       3 · 818,496                                  = 2,455,488
- output conv:       64·3·3·3                                     =     1,728
- total:             1,728 + 2,455,488 + 1,728                    = 2,458,944

Choices and why
---------------
- Three *distinct* DRABs. The authors' forward pass reuses block 1 three times
  (a bug); their module list, and the paper's parameter count, have three.
- Noise gate: the paper's eq. (10), φ(W_g * x) ⊙ σ(W_f * x) with φ = LeakyReLU
  (slope 0.1 as the paper writes it). The authors' code instead applies
  LeakyReLU(0.2) after the product; the parameter count is the same either way.
  Both gate convs keep their bias (as in the authors' gated conv): 2·64 per gate,
  needed for the exact count. Zero padding (the authors reflect-pad the gate):
  it works for any input size, including 1-pixel-wide inputs where reflection
  padding is undefined, and matches the zero padding of every other conv here.
- Biases: input/output convs have none (as the authors'; with them the count
  would be 67 higher); each dynamic conv has K bias vectors aggregated with the
  attention (paper eq. 3), initialised like ``nn.Conv2d``'s bias instead of being
  left uninitialised as in the authors' code. The attention 1×1 convs have no bias.
- Temperature: the authors fix T = 34 and never change it. Here every dynamic
  conv starts at T = 30 and the training loop should call
  ``set_temperature(model, temperature_schedule(step))``, which anneals
  linearly 30 → 1 early in training (Chen et al. 2020) and then stays at 1.
  T is a persistent buffer, so a saved checkpoint restores it (normally 1).
- Values: the network works in [0, 1] input space; ``forward`` returns the
  predicted noise (tanh range), ``denoise`` the clean estimate (not clipped).
- Colour: ``denoise`` takes a colour image's chroma from the network run on its two
  opponent chroma planes as gray images (see ``DRAN.denoise``); ``forward``, which
  training sees, is the paper's network alone.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .dynamic_conv import DynamicConv2d

__all__ = [
    "DRAN",
    "DRAB",
    "chroma_planes",
    "from_luma_chroma",
    "NoiseGate",
    "set_temperature",
    "temperature_schedule",
]


class NoiseGate(nn.Module):
    """Spatial gate on the skip path (paper eq. 8–10).

    ``O = LeakyReLU_0.1(conv_g(x)) ⊙ sigmoid(conv_f(x))``: the sigmoid branch
    learns, per pixel and channel, how much of the low-level feature to pass on,
    so the skip does not carry noise straight to the top of the block.
    Shapes: B×C×H×W → B×C×H×W.
    """

    def __init__(self, channels: int, negative_slope: float = 0.1) -> None:
        super().__init__()
        self.feature = nn.Conv2d(channels, channels, 3, padding=1, bias=True)
        self.mask = nn.Conv2d(channels, channels, 3, padding=1, bias=True)
        self.act = nn.LeakyReLU(negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.feature(x)) * torch.sigmoid(self.mask(x))


class DRAB(nn.Module):
    """Dynamic residual attention block: ``body(x) + noise_gate(x)``.

    ``body`` is ``layers`` × [DynamicConv2d 3×3 → BatchNorm2d → ReLU].
    Shapes: B×C×H×W → B×C×H×W.
    """

    def __init__(
        self,
        channels: int = 64,
        layers: int = 5,
        kernels: int = 4,
        temperature: float = 30.0,
    ) -> None:
        super().__init__()
        body: list[nn.Module] = []
        for _ in range(layers):
            body += [
                DynamicConv2d(
                    channels,
                    channels,
                    3,
                    padding=1,
                    bias=True,
                    kernels=kernels,
                    temperature=temperature,
                ),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*body)
        self.gate = NoiseGate(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.gate(x)


class DRAN(nn.Module):
    """Dynamic Residual Attention Network (residual-noise denoiser).

    Parameters
    ----------
    in_channels:
        Image channels (3; grayscale images are replicated to 3 by the caller).
    features:
        Width of every hidden layer (64 in the paper).
    blocks:
        Number of distinct DRABs (3 in the paper).
    layers_per_block:
        Dynamic-conv layers per DRAB (5 in the paper).
    kernels:
        Kernel banks K per dynamic conv (4).
    temperature:
        Initial attention temperature of every dynamic conv (see
        :func:`temperature_schedule`).

    Any H×W works (all convs are stride 1, 'same' padding).
    """

    #: Mirrored pixels the engine adds around every plane (``runtime.engine_kwargs``): the
    #: zero-padded edges otherwise leave dark blots along some sides of small planes (a 64² MR
    #: slice at σ 15: 24.5–27.7 dB by orientation unpadded, 27.6 dB each with 16 px).
    reflect_border = 16

    def __init__(
        self,
        in_channels: int = 3,
        features: int = 64,
        blocks: int = 3,
        layers_per_block: int = 5,
        kernels: int = 4,
        temperature: float = 30.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.head = nn.Sequential(
            nn.Conv2d(in_channels, features, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.ModuleList(
            DRAB(features, layers_per_block, kernels, temperature) for _ in range(blocks)
        )
        self.tail = nn.Conv2d(features, in_channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict the NOISE in ``x``.

        x: B×3×H×W noisy image, values in [0, 1].
        Returns B×3×H×W predicted noise in (-1, 1) (tanh); the training target is
        ``noisy - clean`` with an L1 loss (paper eq. 12). Use :meth:`denoise` for
        the clean image.
        """
        h = self.head(x)
        for block in self.blocks:
            h = block(h)
        return torch.tanh(self.tail(h))

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """Clean estimate: B×3×H×W in [0, 1] space, not clipped.

        A gray sample (its three channels equal, as callers replicate gray planes) gets
        ``x - forward(x)``. A colour sample keeps the luminance (channel mean) of that estimate
        and takes its two chroma planes from the network run on them as gray images
        (:func:`chroma_planes`): the chroma of most images is smooth, and the network, trained
        mostly on gray planes, removes more noise from them than from the colour channels it
        sees together (photographs in no split +0.3 to +1.0 dB, false-colour fluorescence up
        to +1.7 dB, one training image -0.1 to -0.2 dB: ``training/dran_trials.md``). Denoising in a luminance-chrominance space is what
        colour BM3D does (K. Dabov, A. Foi, V. Katkovnik, K. Egiazarian, "Color image
        denoising via sparse 3D collaborative filtering with grouping constraint in
        luminance-chrominance space", ICIP 2007). Colour samples cost three forward passes.
        """
        clean = x - self.forward(x)
        if x.shape[1] != 3:
            return clean
        colour = ((x[:, 0] != x[:, 1]) | (x[:, 1] != x[:, 2])).flatten(1).any(dim=1)
        if not bool(colour.any()):
            return clean
        xc = x[colour]
        chroma = chroma_planes(xc)
        # One chroma plane at a time, so peak memory stays that of one forward pass, in the
        # layout the caller chose (the engine runs channels-last on CPU, 1.4x faster there).
        last = x.is_contiguous(memory_format=torch.channels_last)
        done = []
        for k in range(2):
            g = chroma[:, k : k + 1].expand(-1, 3, -1, -1)
            g = g.contiguous(memory_format=torch.channels_last) if last else g.contiguous()
            done.append((g - self.forward(g)).mean(dim=1, keepdim=True))
        rgb = from_luma_chroma(clean[colour].mean(dim=1, keepdim=True), torch.cat(done, dim=1))
        out = clean.clone()
        out[colour] = rgb.to(out.dtype)
        return out

    def for_inference(self) -> DRAN:
        """An eval-mode copy with every BatchNorm folded into the dynamic conv before it.

        BatchNorm at inference is a per-channel affine map ``s·(y − μ) + β`` with
        ``s = γ / √(var + ε)``; applied to a dynamic conv's output it equals the same dynamic
        conv with every kernel bank scaled by ``s`` and every bank bias replaced by
        ``s·(b_k − μ) + β`` (exact because the attention weights sum to one). The copy
        computes the same function as ``self.eval()`` (up to float rounding) with 15 fewer
        full-resolution passes over the activations. ``self`` is not changed.
        """
        folded = copy.deepcopy(self).eval()
        with torch.no_grad():
            for block in folded.blocks:
                layers = list(block.body)
                for i, (conv, bn) in enumerate(zip(layers, layers[1:])):
                    if not (isinstance(conv, DynamicConv2d) and isinstance(bn, nn.BatchNorm2d)):
                        continue
                    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                    conv.weight.mul_(scale[None, :, None, None, None])
                    if conv.bias is None:
                        conv.bias = nn.Parameter(torch.zeros(conv.kernels, conv.out_channels))
                    conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
                    block.body[i + 1] = nn.Identity()
        return folded


#: Grey level the chroma planes are centred on: they run through the network as gray images.
CHROMA_OFFSET = 0.5


def chroma_planes(rgb: torch.Tensor, offset: float = CHROMA_OFFSET) -> torch.Tensor:
    """The two chroma planes of an orthonormal opponent colour basis, as gray images.

    ``rgb``: N×3×H×W. Returns N×2×H×W: ``(R − B)/√2`` and ``(R − 2G + B)/√6``, each plus
    ``offset`` (:data:`CHROMA_OFFSET`). The basis (with the luminance ``(R + G + B)/√3``) is orthonormal,
    so noise independent in R, G and B with standard deviation σ has the same σ in each plane.
    """
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    c1 = (r - b) * 0.7071067811865476
    c2 = (r - 2.0 * g + b) * 0.4082482904638631
    return torch.cat([c1, c2], dim=1) + offset


def from_luma_chroma(luma: torch.Tensor, chroma: torch.Tensor,
                     offset: float = CHROMA_OFFSET) -> torch.Tensor:
    """RGB (N×3×H×W) from the channel mean ``luma`` (N×1×H×W) and :func:`chroma_planes`
    output (N×2×H×W): the inverse of the opponent transform."""
    c1 = (chroma[:, 0:1] - offset) * 0.7071067811865476
    c2 = (chroma[:, 1:2] - offset) * 0.4082482904638631
    return torch.cat([luma + c1 + c2, luma - 2.0 * c2, luma - c1 + c2], dim=1)


def set_temperature(model: nn.Module, t: float) -> int:
    """Set the attention temperature of every :class:`DynamicConv2d` in ``model``.

    Returns the number of dynamic convs updated (0 means the model has none).
    """
    n = 0
    for m in model.modules():
        if isinstance(m, DynamicConv2d):
            m.set_temperature(t)
            n += 1
    return n


def temperature_schedule(
    step: int,
    anneal_steps: int = 10_000,
    t0: float = 30.0,
    t1: float = 1.0,
) -> float:
    """Attention temperature for training step ``step`` (0-based).

    Linear from ``t0`` at step 0 to ``t1`` at ``anneal_steps``, then constant
    ``t1``. Chen et al. (2020) anneal 30 → 1 over the first ~3 % of training so
    that all kernel banks receive gradient before attention sharpens; the default
    10,000 steps is 10 % of the paper's 100k-step DRAN schedule, a conservative
    early window.
    """
    if anneal_steps <= 0 or step >= anneal_steps:
        return float(t1)
    frac = max(step, 0) / anneal_steps
    return float(t0 + (t1 - t0) * frac)
