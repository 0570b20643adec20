"""Degradation simulators: Algorithm 1 of the DPE paper (low-quality medical image simulation),
and the low-resolution images of super-resolution training (:func:`downsample`).

Sharif et al., "Deep Perceptual Enhancement for Medical Image Analysis", IEEE JBHI 2022 (section
II-C, Algorithm 1). The authors' code does not contain it, so this follows the
paper, with every gap filled as stated here.

Algorithm 1, as implemented (:func:`degrade`)
----------------------------------------------
Input: a clean image ``I`` in [0, 1], grayscale ``H×W`` or RGB ``H×W×3`` (float).

1. **Luminance check.** ``L`` = CIELAB L* of ``I`` (sRGB, D65; gray images as R = G = B) on
   the 0–255 scale of 8-bit Lab (``round(L* · 255 / 100)``, OpenCV's 8-bit convention, which is
   what an 8-bit image pipeline sees). The mean of the *non-zero* ``L`` values must exceed
   ``brightness_threshold`` (B_T = 100); otherwise the image is too dark to degrade
   meaningfully (the paper: degrading already low-quality images makes the pairs ambiguous)
   and :func:`degrade` raises :class:`TooDarkError`. Use :func:`bright_enough` to test first.
2. **Noise.** σ ~ U(0, ``sigma_max``)/255 (σ_max = 10); ``I_N = clip(I + N(0, σ²), 0, 1)``.
   The paper writes ``I_R × N``; additive Gaussian noise is what its text ("contaminated by
   random noise ... with a standard deviation") describes. Gray images get one
   noise field; RGB images independent noise per channel.
3. **Contrast.** c ~ U(lo, hi); ``I_C = clip(c·I_N + (1 − c)·mean(gray(I_N)), 0, 1)``, exactly
   ``torchvision.transforms.functional.adjust_contrast``: a blend with the mean gray level,
   gray = 0.2989 R + 0.587 G + 0.114 B (a gray image is its own gray level).
4. **Brightness.** b ~ U(lo, hi); ``I_D = clip(b·I_C, 0, 1)``, exactly torchvision's
   ``adjust_brightness`` (a blend with black).

The paper's last line, ``I_D ← I_N × I_C × I_B``, multiplies three images, which would square
and cube the darkening; it is read as the composition brightness(contrast(noise(I))), the order
the algorithm lists them in. The factor range is [lo, hi] = [0.1, 0.8]: the paper says [0, 0.8],
but a factor of 0 makes a black (brightness) or flat (contrast) image with nothing left to
restore, so the lower bound is the 0.1 the authors' ColorJitter used. Both factors are below 1:
every simulated image is darker and flatter than its reference, and the network learns to
brighten, stretch and denoise.

Randomness comes only from the numpy ``Generator`` passed in, drawn in a fixed order
(σ, c, b, then the noise field), so a seed reproduces a degradation exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "BRIGHTNESS_THRESHOLD",
    "FACTOR_RANGE",
    "KERNELS",
    "SIGMA_MAX",
    "Degradation",
    "TooDarkError",
    "adjust_brightness",
    "adjust_contrast",
    "apply_degradation",
    "blur3",
    "bright_enough",
    "degrade",
    "downsample",
    "draw_degradation",
    "mean_luminance",
]

#: B_T of Algorithm 1: the mean non-zero 8-bit Lab L an image needs to be degraded.
BRIGHTNESS_THRESHOLD = 100.0
#: σ of Algorithm 1, in /255 units: the noise σ is drawn from U(0, SIGMA_MAX).
SIGMA_MAX = 10.0
#: Range of the contrast and brightness factors ([0.1, R_max = 0.8]; see the module docstring).
FACTOR_RANGE = (0.1, 0.8)

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma), used by adjust_contrast.
_GRAY = np.array([0.2989, 0.587, 0.114])


class TooDarkError(ValueError):
    """The image is too dark for Algorithm 1 (mean non-zero 8-bit Lab L <= the threshold)."""


@dataclass(frozen=True)
class Degradation:
    """The random parameters of one Algorithm 1 degradation.

    Attributes:
        sigma: Gaussian noise standard deviation in [0, 1] intensity units (σ/255).
        contrast: contrast factor c (1 = unchanged, 0 = flat mean gray).
        brightness: brightness factor b (1 = unchanged, 0 = black).
    """

    sigma: float
    contrast: float
    brightness: float


def _check_image(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(
            f"expected a grayscale H×W or RGB H×W×3 image; got shape {a.shape} "
            "(degrade each plane of a stack separately)"
        )
    if a.dtype.kind != "f":
        raise ValueError(
            f"expected a float image in [0, 1]; got dtype {a.dtype} (convert with "
            "skimage.util.img_as_float or divide by the dtype's maximum first)"
        )
    lo, hi = float(np.min(a)), float(np.max(a))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"image values must be finite and within [0, 1]; got [{lo}, {hi}] "
            "(normalise it first, e.g. by robust percentiles, then clip)"
        )
    return a


def mean_luminance(image: np.ndarray) -> float:
    """Mean of the non-zero 8-bit Lab L values of ``image`` (0–255 scale; 0 if all are zero).

    ``image``: float gray ``H×W`` or RGB ``H×W×3`` in [0, 1], read as sRGB. L is CIELAB L*
    scaled by 255/100 and rounded, as in an 8-bit Lab image (OpenCV's convention).
    """
    from skimage.color import rgb2lab

    a = _check_image(image).astype(np.float64)
    rgb = a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2)
    lum = np.rint(rgb2lab(rgb)[..., 0] * (255.0 / 100.0))
    nonzero = lum[lum > 0]
    return float(nonzero.mean()) if nonzero.size else 0.0


def bright_enough(image: np.ndarray, threshold: float = BRIGHTNESS_THRESHOLD) -> bool:
    """Whether Algorithm 1 degrades ``image``: :func:`mean_luminance` above ``threshold``."""
    return mean_luminance(image) > threshold


def draw_degradation(
    rng: np.random.Generator,
    *,
    sigma_max: float = SIGMA_MAX,
    factor_range: tuple[float, float] = FACTOR_RANGE,
) -> Degradation:
    """Draw σ ~ U(0, sigma_max)/255, then contrast and brightness ~ U(*factor_range).

    Raises:
        ValueError: ``sigma_max < 0`` or a factor range outside (0, 1] or with lo > hi.
    """
    lo, hi = (float(f) for f in factor_range)
    if sigma_max < 0:
        raise ValueError(f"sigma_max must be >= 0 (in /255 units); got {sigma_max}")
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(
            f"factor_range must satisfy 0 < lo <= hi <= 1; got {factor_range} (a factor of 0 "
            "gives a black or flat image; the paper's range is [0, 0.8], used here as [0.1, 0.8])"
        )
    sigma = float(rng.uniform(0.0, sigma_max)) / 255.0
    contrast = float(rng.uniform(lo, hi))
    brightness = float(rng.uniform(lo, hi))
    return Degradation(sigma, contrast, brightness)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """torchvision's ``adjust_contrast`` on a float [0, 1] image: blend with the mean gray level.

    ``clip(factor · image + (1 − factor) · m, 0, 1)`` where ``m`` is the mean of the image's
    gray level (0.2989 R + 0.587 G + 0.114 B for RGB, the image itself for gray).
    """
    gray = image @ _GRAY if image.ndim == 3 else image
    mean = float(gray.mean())
    return np.clip(factor * image + (1.0 - factor) * mean, 0.0, 1.0)


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """torchvision's ``adjust_brightness`` on a float [0, 1] image: ``clip(factor · image, 0, 1)``."""
    return np.clip(factor * image, 0.0, 1.0)


def apply_degradation(
    image: np.ndarray, params: Degradation, rng: np.random.Generator
) -> np.ndarray:
    """Noise, then contrast, then brightness (module docstring), without the luminance check.

    ``image``: float gray ``H×W`` or RGB ``H×W×3`` in [0, 1]; the noise field is drawn from
    ``rng``. Returns float32 of the same shape, in [0, 1].
    """
    a = _check_image(image).astype(np.float64)
    noisy = np.clip(a + params.sigma * rng.standard_normal(a.shape), 0.0, 1.0)
    out = adjust_brightness(adjust_contrast(noisy, params.contrast), params.brightness)
    return out.astype(np.float32)


def degrade(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    brightness_threshold: float | None = BRIGHTNESS_THRESHOLD,
    sigma_max: float = SIGMA_MAX,
    factor_range: tuple[float, float] = FACTOR_RANGE,
) -> np.ndarray:
    """Algorithm 1 of the DPE paper: a low-quality version of a clean image (module docstring).

    Args:
        image: float gray ``H×W`` or RGB ``H×W×3`` in [0, 1] (the clean reference).
        rng: the only source of randomness (parameters first, then the noise field).
        brightness_threshold: B_T on the 0–255 L scale; None skips the luminance check.
        sigma_max: maximum noise σ in /255 units.
        factor_range: range of the contrast and brightness factors.

    Returns:
        float32, the shape of ``image``, values in [0, 1].

    Raises:
        TooDarkError: the image's mean non-zero L is <= ``brightness_threshold`` (Algorithm 1
            skips such images; nothing is drawn from ``rng`` then).
        ValueError: not a float gray / RGB image in [0, 1], or bad parameters.
    """
    a = _check_image(image)
    if brightness_threshold is not None:
        lum = mean_luminance(a)
        if not lum > brightness_threshold:
            raise TooDarkError(
                f"image too dark for Algorithm 1: mean non-zero Lab L is {lum:.1f} (0-255 "
                f"scale), at most the threshold {brightness_threshold:g}; skip it, or pass "
                "brightness_threshold=None to degrade it anyway"
            )
    params = draw_degradation(rng, sigma_max=sigma_max, factor_range=factor_range)
    return apply_degradation(a, params, rng)


# --------------------------------------------------------------------------------------------
# low-resolution simulation for super-resolution (the SR recipe's LR kernels)

#: The LR kernels a recipe can train and validate with (``recipes.sr``'s module docstring):
#: antialiased bicubic; scikit-image's Gaussian anti-aliasing then linear decimation; and the
#: MS-GAN authors' 3×3 binomial blur then antialiased bicubic.
KERNELS = ("bicubic", "gaussian", "blur3")


def blur3(x: torch.Tensor) -> torch.Tensor:
    """3×3 Gaussian blur with the binomial kernel [1 2 1]/4 per axis (OpenCV's 3×3 kernel for
    sigma 0); B×C×H×W → same shape, reflected borders."""
    k1 = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
    k = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k, groups=x.shape[1])


def downsample(x: torch.Tensor, factor: int, *, kernel: str = "bicubic") -> torch.Tensor:
    """LR simulation with one of :data:`KERNELS` (``recipes.sr``'s module docstring).

    B×C×H×W (H, W multiples of ``factor``) → B×C×(H/factor)×(W/factor), float.
    """
    if x.shape[-2] % factor or x.shape[-1] % factor:
        raise ValueError(
            f"downsample needs sides that are multiples of {factor}; got {tuple(x.shape[-2:])}"
        )
    if kernel not in KERNELS:
        raise ValueError(f"unknown LR kernel {kernel!r}; choose from {', '.join(KERNELS)}")
    if kernel == "gaussian":
        from skimage.transform import resize

        a = x.detach().cpu().numpy()
        shape = (*a.shape[:2], a.shape[2] // factor, a.shape[3] // factor)
        out = resize(a, shape, order=1, mode="reflect", anti_aliasing=True)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(x.device, x.dtype)
    if kernel == "blur3":
        x = blur3(x)
    return F.interpolate(x, scale_factor=1.0 / factor, mode="bicubic", antialias=True,
                         align_corners=False)
