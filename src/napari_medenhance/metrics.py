"""Public quality metrics: PSNR, SSIM, CIEDE2000 ΔE, LaSSIM and per-pixel maps.

Qt- and napari-free; see :mod:`napari_medenhance.core.metrics` for the shared conventions
(shapes, ``rgb`` auto-detection, ``data_range`` defaults, stacks as 2-D planes).

>>> from napari_medenhance.metrics import psnr, ssim, lassim, delta_e
"""

from .core.metrics import (
    delta_e,
    iter_metric_maps,
    iter_stack_metrics,
    lassim,
    lassim_map,
    max_lassim_level,
    plane_metrics,
    psnr,
    ssim,
    ssim_map,
)

__all__ = [
    "psnr",
    "ssim",
    "lassim",
    "delta_e",
    "ssim_map",
    "lassim_map",
    "plane_metrics",
    "iter_stack_metrics",
    "iter_metric_maps",
    "max_lassim_level",
]
