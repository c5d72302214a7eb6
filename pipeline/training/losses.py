"""SimGAN losses: the local adversarial loss and the self-regularisation term.

Convention (the paper's): class 1 = refined, class 0 = real, on every location of D's
(N, 2, h, w) logit map.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pipeline.models import REAL, REFINED


def local_adversarial_loss(logits: torch.Tensor, target: int, smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy at every location of an (N, 2, h, w) logit map, averaged.

    The softmax is taken over dim 1, the two class logits of one location. With
    `smoothing` s the target distribution is (1 - s) on `target` and s on the other
    class (callers use it only for the real class: one-sided label smoothing).
    """
    if logits.dim() != 4 or logits.shape[1] != 2:
        raise ValueError(f"expected an (N, 2, h, w) logit map, got shape {tuple(logits.shape)}")
    log_p = F.log_softmax(logits, dim=1)
    soft_target = torch.full_like(log_p[:, :1], smoothing).expand_as(log_p).clone()
    soft_target[:, target] = 1.0 - smoothing
    return -(soft_target * log_p).sum(dim=1).mean()


def discriminator_loss(refined_logits: torch.Tensor, real_logits: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """L_D: refined patches are class 1, real patches class 0 (only the real target is smoothed)."""
    return local_adversarial_loss(refined_logits, REFINED) + local_adversarial_loss(real_logits, REAL, smoothing)


def refiner_adversarial_loss(refined_logits: torch.Tensor) -> torch.Tensor:
    """-log(1 - D(R(x))): the refiner wants every patch taken for real (class 0)."""
    return local_adversarial_loss(refined_logits, REAL)


_BLUR_KERNEL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])


def _blur(images: torch.Tensor) -> torch.Tensor:
    """A fixed 5x5 binomial (Gaussian-like) blur per channel, replicate-padded."""
    k1 = (_BLUR_KERNEL / _BLUR_KERNEL.sum()).to(images)
    kernel = (k1[:, None] * k1[None, :]).expand(images.shape[1], 1, 5, 5)
    padded = F.pad(images, (2, 2, 2, 2), mode="replicate")
    return F.conv2d(padded, kernel, groups=images.shape[1])


def psi(images: torch.Tensor, kind: str) -> torch.Tensor:
    """The feature transform the self-regularisation compares images in."""
    if kind == "identity":
        return images
    if kind == "channel_mean":
        return images.mean(dim=1, keepdim=True)
    if kind == "blur":
        return _blur(images)
    if kind == "normalised":
        # Each image as deviations from its own mean in units of its own spread, sign
        # dropped: unchanged by brightness, contrast and polarity, so a refiner may
        # match faded, grey-paper or dark-on-light real images for free, while moving,
        # adding or erasing strokes still costs.
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        spread = images.std(dim=(1, 2, 3), keepdim=True).clamp_min(0.02)
        return ((images - mean) / spread).abs()
    raise ValueError(f"unknown psi {kind!r}")


def self_regularisation(refined: torch.Tensor, synthetic: torch.Tensor, kind: str = "identity") -> torch.Tensor:
    """Mean L1 distance between psi(refined) and psi(synthetic); both in [0, 1]."""
    return (psi(refined, kind) - psi(synthetic, kind)).abs().mean()


def deformation_penalty(field: torch.Tensor) -> torch.Tensor:
    """Size plus roughness of an (N, 2, H, W) displacement field in pixels: the mean
    squared displacement and the mean squared difference between neighbours."""
    size = (field**2).mean()
    rough = ((field[..., 1:, :] - field[..., :-1, :]) ** 2).mean() + ((field[..., :, 1:] - field[..., :, :-1]) ** 2).mean()
    return size + rough
