"""Gaussian / Laplacian pyramids with OpenCV ``pyrDown`` / ``pyrUp`` semantics.

Implemented with numpy/scipy so the plugin does not need OpenCV at run time; the tests pin
every function against ``cv2`` elementwise. All functions work on one 2-D float plane
(``(H, W)``) and return float64.

OpenCV conventions reproduced here:

* kernel: 5x5 separable binomial ``[1, 4, 6, 4, 1] / 16`` in each direction;
* borders: ``BORDER_REFLECT_101`` (``dcb|abcd|cba``), i.e. scipy's ``mode="mirror"``;
* ``pyr_down``: filter, keep even rows and columns -> ``((H + 1) // 2, (W + 1) // 2)``;
* ``pyr_up``: zero-insert into a ``(2h, 2w)`` grid, filter with 4x the kernel (reflect-101 in
  that ``2h x 2w`` grid), then fit to ``dst_shape``. OpenCV allows each output side to be
  ``2n - 1``, ``2n`` or ``2n + 1``: ``2n - 1`` is the ``2n`` result cropped (the border is *not*
  re-reflected inside the odd grid); ``2n + 1`` appends a copy of row ``2n - 2`` (reflect-101)
  but of column ``2n - 1`` (replicate). All checked against OpenCV 5.0 in the tests.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["pyr_down", "pyr_up", "gaussian_pyramid", "laplacian_band", "pyramid_shape"]

_KERNEL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _as_plane(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected one 2-D plane (H, W), got an array of shape {a.shape}")
    if a.size == 0:
        raise ValueError("expected a non-empty 2-D plane, got an empty array")
    return a


def _blur(a: np.ndarray, weights: np.ndarray) -> np.ndarray:
    a = ndi.correlate1d(a, weights, axis=0, mode="mirror")
    return ndi.correlate1d(a, weights, axis=1, mode="mirror")


def pyramid_shape(shape_yx: tuple[int, int], level: int) -> tuple[int, int]:
    """Shape of Gaussian level ``level`` for a plane of shape ``(H, W)`` (pyrDown rounding up)."""
    h, w = int(shape_yx[0]), int(shape_yx[1])
    for _ in range(level):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def pyr_down(image: np.ndarray) -> np.ndarray:
    """``cv2.pyrDown``: (H, W) -> ((H + 1) // 2, (W + 1) // 2), float64."""
    a = _as_plane(image)
    return _blur(a, _KERNEL)[::2, ::2]


def pyr_up(image: np.ndarray, dst_shape: tuple[int, int] | None = None) -> np.ndarray:
    """``cv2.pyrUp(image, dstsize=(dst_shape[1], dst_shape[0]))``: (h, w) -> ``dst_shape``.

    ``dst_shape`` is ``(rows, cols)`` (numpy order, unlike OpenCV's ``dstsize``) and defaults to
    ``(2h, 2w)``; each side must be ``2n - 1``, ``2n`` or ``2n + 1`` for an input side ``n``.
    """
    a = _as_plane(image)
    h, w = a.shape
    dh, dw = (2 * h, 2 * w) if dst_shape is None else (int(dst_shape[0]), int(dst_shape[1]))
    for n, d in ((h, dh), (w, dw)):
        if abs(d - 2 * n) > 1 or (d != 2 * n and d % 2 == 0):
            raise ValueError(
                f"pyr_up: output side {d} is not 2*{n}-1, 2*{n} or 2*{n}+1 "
                f"(input shape {a.shape}, dst_shape {(dh, dw)})"
            )
    up = np.zeros((2 * h, 2 * w))
    up[::2, ::2] = a
    # 4x the kernel in 2-D = 2x per separable pass, compensating for the inserted zeros.
    up = _blur(up, 2.0 * _KERNEL)
    # OpenCV's extra row/column for a 2n + 1 side is asymmetric: the row repeats row 2n - 2
    # (reflect-101) but the column repeats column 2n - 1 (replicate).
    if dh > 2 * h:
        up = np.concatenate([up, up[-2:-1]], axis=0)
    if dw > 2 * w:
        up = np.concatenate([up, up[:, -1:]], axis=1)
    return up[:dh, :dw]


def gaussian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """``[G0, G1, ..., G_levels]`` with ``G0 = image`` (float64) and ``G(i+1) = pyr_down(Gi)``."""
    g = [_as_plane(image)]
    for _ in range(levels):
        g.append(pyr_down(g[-1]))
    return g


def laplacian_band(image: np.ndarray, level: int) -> np.ndarray:
    """Laplacian-pyramid band ``L_l = G_l - pyr_up(G_(l+1), G_l.shape)``, shape of ``G_l``.

    Equal to what the LaSSIM authors compute with ``cv2.pyrDown`` and
    ``cv2.pyrUp(G[l+1], dstsize=G[l].shape[::-1])``.
    """
    g = gaussian_pyramid(image, level + 1)
    return g[level] - pyr_up(g[level + 1], g[level].shape)
