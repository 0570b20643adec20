"""Differentiable Gaussian / Laplacian pyramids in torch, with OpenCV ``pyrDown`` / ``pyrUp``
semantics: the torch twin of :mod:`napari_medenhance.core.pyramid` (numpy, used by LaSSIM).

The LaMEGAN structure-preserving loss compares Laplacian bands of images *inside* the training
graph, so it needs the band as a torch function that gradients flow through; using the same
band as the LaSSIM metric means the loss optimises exactly what validation measures. The tests
pin every function here against the numpy module (float64: to 1e-12; float32: 1e-6).

Conventions (as :mod:`napari_medenhance.core.pyramid`):

* tensors are ``B×C×H×W`` (any float dtype, any device); every channel is filtered alone;
* kernel: separable binomial ``[1, 4, 6, 4, 1] / 16``; borders ``BORDER_REFLECT_101``
  (``dcb|abcd|cba``), for any side length, including 1 and 2 (where a padding reflect would
  fail: the border indices are computed, then gathered, which is also differentiable);
* ``pyr_down``: filter, keep even rows / columns -> ``((H + 1) // 2, (W + 1) // 2)``;
* ``pyr_up``: zero-insert into ``(2h, 2w)``, filter with 4× the kernel (2× per pass), then fit
  to ``dst_shape`` (``2n - 1``: crop; ``2n + 1``: append row ``2n - 2`` / column ``2n - 1``,
  OpenCV's asymmetric rule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gaussian_pyramid", "laplacian_band", "pyr_down", "pyr_up", "band_shape"]

_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)
_PAD = 2  # half the kernel


def band_shape(shape_yx: tuple[int, int], level: int) -> tuple[int, int]:
    """``(h, w)`` of Gaussian level / Laplacian band ``level`` of a ``(H, W)`` plane."""
    h, w = int(shape_yx[0]), int(shape_yx[1])
    for _ in range(int(level)):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def _check(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} expects a B×C×H×W tensor; got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{what} expects a floating-point tensor; got {x.dtype}")
    if x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ValueError(f"{what} expects a non-empty image; got {tuple(x.shape)}")


def _reflect101_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices into a side of length ``n`` for positions ``-pad .. n + pad - 1`` (reflect-101,
    scipy's ``mirror``: period ``2n - 2``; a side of 1 repeats its only pixel)."""
    i = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * n - 2
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


def _blur(x: torch.Tensor, gain: float) -> torch.Tensor:
    """Separable 5-tap binomial filter × ``gain`` per pass, reflect-101 borders, same size."""
    b, c, h, w = x.shape
    k = torch.tensor(_TAPS, dtype=x.dtype, device=x.device) * (gain / 16.0)
    y = x.reshape(b * c, 1, h, w)
    y = y.index_select(2, _reflect101_index(h, _PAD, x.device))
    y = F.conv2d(y, k.view(1, 1, 5, 1))
    y = y.index_select(3, _reflect101_index(w, _PAD, x.device))
    y = F.conv2d(y, k.view(1, 1, 1, 5))
    return y.reshape(b, c, h, w)


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """``cv2.pyrDown`` per channel: ``B×C×H×W`` -> ``B×C×((H + 1) // 2)×((W + 1) // 2)``."""
    _check(x, "pyr_down")
    return _blur(x, 1.0)[:, :, ::2, ::2]


def pyr_up(x: torch.Tensor, dst_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """``cv2.pyrUp(x, dstsize=(dst_shape[1], dst_shape[0]))`` per channel.

    ``dst_shape`` is ``(rows, cols)`` (default ``(2h, 2w)``); each side must be ``2n - 1``,
    ``2n`` or ``2n + 1`` for an input side ``n``.
    """
    _check(x, "pyr_up")
    b, c, h, w = x.shape
    dh, dw = (2 * h, 2 * w) if dst_shape is None else (int(dst_shape[0]), int(dst_shape[1]))
    for n, d in ((h, dh), (w, dw)):
        if abs(d - 2 * n) > 1 or (d != 2 * n and d % 2 == 0):
            raise ValueError(
                f"pyr_up: output side {d} is not 2*{n}-1, 2*{n} or 2*{n}+1 "
                f"(input {h}×{w}, dst_shape {(dh, dw)})"
            )
    up = x.new_zeros(b, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    # 2× per separable pass = 4× in 2-D: compensates for the three inserted zeros per pixel.
    up = _blur(up, 2.0)
    if dh > 2 * h:  # OpenCV: the extra row repeats row 2n - 2 (reflect-101) ...
        up = torch.cat([up, up[:, :, -2:-1]], dim=2)
    if dw > 2 * w:  # ... but the extra column repeats column 2n - 1 (replicate)
        up = torch.cat([up, up[:, :, :, -1:]], dim=3)
    return up[:, :, :dh, :dw]


def gaussian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``[G0, ..., G_levels]`` with ``G0 = x`` and ``G(i+1) = pyr_down(Gi)``."""
    _check(x, "gaussian_pyramid")
    if int(levels) < 0:
        raise ValueError(f"levels must be >= 0, got {levels}")
    g = [x]
    for _ in range(int(levels)):
        g.append(pyr_down(g[-1]))
    return g


def laplacian_band(x: torch.Tensor, level: int) -> torch.Tensor:
    """Laplacian band ``L_l = G_l - pyr_up(G_(l+1), G_l.shape)`` of every channel.

    Shapes: ``B×C×H×W`` -> ``B×C×h×w`` with ``(h, w) = band_shape((H, W), level)`` (1/2^l,
    rounded up). Values are in ``x``'s units (a band is signed, roughly zero-mean). Equal to
    :func:`napari_medenhance.core.pyramid.laplacian_band` on each plane.
    """
    if int(level) < 0:
        raise ValueError(f"level must be >= 0, got {level}")
    g = gaussian_pyramid(x, int(level) + 1)
    return g[-2] - pyr_up(g[-1], tuple(g[-2].shape[-2:]))
