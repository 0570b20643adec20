"""Loss terms of the DPE perceptual objective (Sharif et al., "Deep Perceptual
Enhancement for Medical Image Analysis", IEEE JBHI 2022, eq. 8-11).

All image tensors here are B×3×H×W in DPE's [-1, 1] space unless a function says otherwise.

The objective, as implemented (:class:`PerceptualObjective` composes the terms)
------------------------------------------------------------------------------
::

    L_P  = L_R + w_F · L_RFL + λ_G · L_G                                    (paper eq. 11)

    L_R   = mean |G(x) − y|                                                 (eq. 8, L1)
    L_RFL = L_feat · L_grad                                                 (eq. 9)
    L_feat = mean |ψ(G(x)) − ψ(y)|         ψ = VGG16 conv5_3, before its ReLU, of the images
                                           mapped to [0, 1] (VGG16Features preprocesses them),
                                           times s_F = 1/127.5 (below)
    L_grad = (Σ |∂_y G(x) − ∂_y y| + Σ |∂_x G(x) − ∂_x y|) / (B·C·H·W)
             ∂_y, ∂_x = forward differences between neighbouring rows / columns, in [-1, 1]
    L_G   = mean BCE(D(G(x) ‖ x), 1)                                        (eq. 10)

with ``w_F = 1`` and ``λ_G = 1e-4`` (the paper's value; the authors' code uses 1e-3). The
paper's λ_R, "total variant regularise", is read from the authors' code: the feature L1 is
*multiplied* by the L1 difference of the two images' gradients, so the feature term only acts
where the output's edges differ from the reference's, and vanishes for identical images.
ψ is VGG16 conv5_3 because VGG-19's conv5_4 (the code's ``vgg19.features[:35]``, i.e. conv5_4
before its ReLU) is unavailable here; conv5_3 is the layer at the same depth. Unlike the
authors' code, which feeds [-1, 1] images straight into torchvision's VGG-19, ψ sees the
images with the preprocessing its weights were trained with (BGR, 0–255, minus the mean).

**Feature scale s_F.** That preprocessing puts the images on ±127.5 around the mean where the
authors' network saw [-1, 1], and the activations of a ReLU network grow with its input scale
(exactly so without biases): conv5_3 differences here are O(10), two orders of magnitude above
the authors'. Because L_RFL *multiplies* the feature term into the gradient term, that factor
would turn the objective into a ~20× weighted edge-matching loss that swamps L1 (seen in short
runs: with s_F = 1 the validation PSNR barely moved in 20 steps where L1 alone gained 3 dB).
s_F = 1/127.5 maps the caffe input range back onto the authors' [-1, 1], keeping the paper's
balance of terms; ``feature_scale`` changes it.

The discriminator D (``nets.discriminators.SwishDiscriminator``) is conditional (the paper's
cGAN, eq. 10): it judges an image concatenated with the degraded input ``x``. Its loss, with
the authors' noisy labels drawn per sample from torch's RNG (which the training loop
checkpoints),

::

    L_D = mean BCE(D(y ‖ x), u_real) + mean BCE(D(G(x).detach() ‖ x), u_fake)
          u_real ~ U(0.7, 1.2),  u_fake ~ U(0, 0.3)

BCE takes logits (log-sigmoid, stable) and clamps each log at -100 as ``torch.nn.BCELoss``
does. Targets above 1, which current torch's ``BCELoss`` refuses, keep the authors' meaning:
``−[u·log p + (1 − u)·log(1 − p)]``; for u > 1 that term keeps rewarding a more confident
"real" until the clamp (logit ≈ 100), exactly as in their (older) torch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DPE_ADVERSARIAL_WEIGHT",
    "FEATURE_SCALE",
    "FAKE_LABELS",
    "REAL_LABELS",
    "PerceptualObjective",
    "bce_with_logits",
    "gradient_l1",
    "gradient_penalty",
    "noisy_labels",
]

#: λ_G of the DPE paper (eq. 11); the SR recipe's WGAN weight is ``recipes.sr.WGAN_WEIGHT``.
DPE_ADVERSARIAL_WEIGHT = 1e-4
#: s_F: VGG16 (caffe preprocessing) features → the scale of the authors' [-1, 1]-input VGG-19.
FEATURE_SCALE = 1.0 / 127.5
#: The authors' noisy label ranges for real and generated images.
REAL_LABELS = (0.7, 1.2)
FAKE_LABELS = (0.0, 0.3)
# torch.nn.BCELoss clamps its logs at -100 so that p = 0 or 1 gives a finite loss.
_LOG_CLAMP = -100.0


def gradient_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L1 difference of the image gradients of ``x`` and ``y`` (B×C×H×W, any value range).

    ``(Σ|∂_y x − ∂_y y| + Σ|∂_x x − ∂_x y|) / (B·C·H·W)`` with forward differences between
    neighbouring rows and columns, the authors' normalisation (by all pixels, not by the number
    of differences). 0 when ``x − y`` is constant. Returns a scalar tensor.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"gradient_l1 needs two B×C×H×W tensors of one shape; got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    d = x - y
    dy = (d[:, :, 1:, :] - d[:, :, :-1, :]).abs().sum()
    dx = (d[:, :, :, 1:] - d[:, :, :, :-1]).abs().sum()
    return (dy + dx) / d.numel()


def bce_with_logits(logits: torch.Tensor, target: torch.Tensor | float) -> torch.Tensor:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against ``target`` (any real target).

    ``−[t·max(log σ(z), −100) + (1 − t)·max(log(1 − σ(z)), −100)]``, averaged: torch's
    ``BCELoss`` on ``sigmoid(z)`` (same clamp) without its 0 ≤ t ≤ 1 check, computed with
    log-sigmoid so that it stays accurate where σ(z) rounds to 0 or 1.
    """
    t = torch.as_tensor(target, dtype=logits.dtype, device=logits.device)
    log_p = F.logsigmoid(logits).clamp(min=_LOG_CLAMP)
    log_q = F.logsigmoid(-logits).clamp(min=_LOG_CLAMP)
    return -(t * log_p + (1.0 - t) * log_q).mean()


def noisy_labels(
    n: int, bounds: tuple[float, float], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``n×1`` labels ~ U(*bounds), drawn from torch's global (CPU) RNG, then moved to ``device``.

    The CPU generator is used on every device so that a run's labels do not depend on where it
    runs and are restored exactly from a checkpoint's ``rng/torch``.
    """
    lo, hi = bounds
    return (torch.rand(n, 1) * (hi - lo) + lo).to(device)


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1]."""
    return (x + 1.0) * 0.5


class PerceptualObjective(nn.Module):
    """The DPE generator and discriminator losses with switches (module docstring).

    Args:
        features: the feature network ψ, called on RGB images in [0, 1] and returning
            ``{layer: B×C×h×w}`` (e.g. ``nets.vgg.VGG16Features(("conv5_3",))``); None when
            ``feature_weight == 0``.
        feature_weight: w_F (1 in the paper; 0 turns the regularized feature term off).
        feature_scale: s_F, multiplies the features before their L1 (module docstring).
        adversarial_weight: λ_G (1e-4; 0 turns the GAN off: no discriminator is needed).
        real_labels, fake_labels: ranges of the discriminator's noisy targets.

    ``generator_loss(out, target, inputs, disc)`` → (scalar, logs); ``discriminator_loss(out,
    target, inputs, disc)`` → (scalar, logs). ``out``/``target``/``inputs``: B×3×H×W in
    [-1, 1]; logs are floats named ``l1``, ``feat``, ``grad``, ``rfl``, ``adv``, ``total``,
    ``d_loss``, ``d_real``, ``d_fake`` (the last two: mean probability D gives real / generated
    images).
    """

    def __init__(
        self,
        features: Callable[[torch.Tensor], dict[str, torch.Tensor]] | nn.Module | None = None,
        *,
        feature_weight: float = 1.0,
        feature_scale: float = FEATURE_SCALE,
        adversarial_weight: float = DPE_ADVERSARIAL_WEIGHT,
        real_labels: tuple[float, float] = REAL_LABELS,
        fake_labels: tuple[float, float] = FAKE_LABELS,
    ) -> None:
        super().__init__()
        if feature_weight < 0 or adversarial_weight < 0:
            raise ValueError(
                f"loss weights must be >= 0; got feature_weight={feature_weight}, "
                f"adversarial_weight={adversarial_weight}"
            )
        if feature_weight > 0 and features is None:
            raise ValueError(
                "the regularized feature loss needs a feature network (e.g. "
                "VGG16Features(('conv5_3',))); pass features=..., or feature_weight=0"
            )
        self.features = features
        self.feature_weight = float(feature_weight)
        self.feature_scale = float(feature_scale)
        self.adversarial_weight = float(adversarial_weight)
        self.real_labels = tuple(float(v) for v in real_labels)
        self.fake_labels = tuple(float(v) for v in fake_labels)

    @property
    def uses_discriminator(self) -> bool:
        """Whether the objective has an adversarial term (and so needs a discriminator)."""
        return self.adversarial_weight > 0

    def regularized_feature_loss(
        self, out: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(L_feat · L_grad, L_feat, L_grad)`` for B×3×H×W images in [-1, 1]; L_feat includes
        the feature scale s_F."""
        if self.features is None:
            raise ValueError("no feature network: this objective was built with feature_weight=0")
        fo = self.features(_to_unit(out))
        with torch.no_grad():
            ft = self.features(_to_unit(target))
        feat = self.feature_scale * sum((fo[k] - ft[k]).abs().mean() for k in fo) / len(fo)
        grad = gradient_l1(out, target)
        return feat * grad, feat, grad

    def generator_loss(
        self,
        out: torch.Tensor,
        target: torch.Tensor,
        inputs: torch.Tensor,
        disc: nn.Module | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``L_R + w_F·L_RFL + λ_G·L_G`` and its terms (class docstring)."""
        l1 = (out - target).abs().mean()
        total = l1
        logs = {"l1": float(l1.detach())}
        if self.feature_weight > 0:
            rfl, feat, grad = self.regularized_feature_loss(out, target)
            total = total + self.feature_weight * rfl
            logs.update(feat=float(feat.detach()), grad=float(grad.detach()), rfl=float(rfl.detach()))
        if self.uses_discriminator:
            if disc is None:
                raise ValueError("the adversarial term needs the discriminator; pass disc=...")
            adv = bce_with_logits(_disc_logits(disc, out, inputs), 1.0)
            total = total + self.adversarial_weight * adv
            logs["adv"] = float(adv.detach())
        logs["total"] = float(total.detach())
        return total, logs

    def discriminator_loss(
        self,
        out: torch.Tensor,
        target: torch.Tensor,
        inputs: torch.Tensor,
        disc: nn.Module,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``BCE(D(target‖x), U(real)) + BCE(D(out.detach()‖x), U(fake))`` and its logs."""
        n = out.shape[0]
        real = _disc_logits(disc, target, inputs)
        fake = _disc_logits(disc, out.detach(), inputs)
        loss = bce_with_logits(real, noisy_labels(n, self.real_labels, real.device)) + bce_with_logits(
            fake, noisy_labels(n, self.fake_labels, fake.device)
        )
        logs = {
            "d_loss": float(loss.detach()),
            "d_real": float(torch.sigmoid(real.detach()).mean()),
            "d_fake": float(torch.sigmoid(fake.detach()).mean()),
        }
        return loss, logs


def _disc_logits(disc: nn.Module, image: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Discriminator logits of ``image``, conditioned on ``inputs`` when D takes 6 channels."""
    cond = int(getattr(disc, "in_channels", image.shape[1])) == image.shape[1] + inputs.shape[1]
    x = torch.cat([image, inputs], dim=1) if cond else image
    logits = getattr(disc, "logits", None)
    return logits(x) if callable(logits) else torch.logit(disc(x).clamp(1e-7, 1 - 1e-7))


def gradient_penalty(critic: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: mean over samples of (‖∇_x̂ C(x̂)‖₂ − 1)², x̂ = ε·real + (1 − ε)·fake.

    ε ~ U(0, 1) per sample from torch's CPU RNG (device-independent and checkpointed). The
    graph is kept (``create_graph``) so the penalty trains the critic.
    """
    eps = torch.rand(real.shape[0], 1, 1, 1).to(device=real.device, dtype=real.dtype)
    xhat = (eps * real + (1.0 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(xhat).sum(), xhat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()
