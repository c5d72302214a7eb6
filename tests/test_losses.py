import math

import torch
from torch.nn import functional as F

from pipeline.models import REAL, REFINED
from pipeline.training import losses


def _reshape_bug_loss(logits, target):
    # The known defect: NCHW reshaped to (N, -1, 2) without moving the class axis.
    pairs = logits.reshape(logits.shape[0], -1, 2)
    return F.cross_entropy(pairs.reshape(-1, 2), torch.full((pairs.shape[0] * pairs.shape[1],), target))


def test_softmax_is_over_the_class_axis_at_each_location():
    # Location (i, j) says "refined" with margin m_ij; neighbours differ, so pairing
    # neighbouring pixels instead of the two class logits gives another answer.
    margins = torch.tensor([[4.0, -1.0], [0.5, 2.0]])
    logits = torch.stack([torch.zeros(2, 2), margins])[None]  # (1, 2, 2, 2)
    expected = torch.log1p(torch.exp(-margins)).mean()  # -log softmax(class 1) per location
    got = losses.local_adversarial_loss(logits, REFINED)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(_reshape_bug_loss(logits, REFINED), expected, atol=1e-3)


def test_loss_matches_cross_entropy_at_every_location():
    logits = torch.randn(3, 2, 5, 4)
    for target in (REAL, REFINED):
        reference = F.cross_entropy(logits, torch.full((3, 5, 4), target))
        assert torch.allclose(losses.local_adversarial_loss(logits, target), reference, atol=1e-6)


def test_label_convention_refined_is_one_real_is_zero():
    says_refined = torch.zeros(2, 2, 3, 3)
    says_refined[:, REFINED] = 5.0
    says_real = -says_refined
    # D is right when it calls refined images refined and real ones real.
    assert losses.discriminator_loss(says_refined, says_real) < 0.02
    assert losses.discriminator_loss(says_real, says_refined) > 9
    # The refiner wins when D calls its output real.
    assert losses.refiner_adversarial_loss(says_real) < 0.01
    assert losses.refiner_adversarial_loss(says_refined) > 4.9


def test_label_smoothing_softens_only_the_real_target():
    says_refined = torch.zeros(1, 2, 2, 2)
    says_refined[:, REFINED] = 8.0
    says_real = -says_refined
    plain = losses.discriminator_loss(says_refined, says_real)
    smoothed = losses.discriminator_loss(says_refined, says_real, smoothing=0.1)
    # Only the real half changes: 0.1 of its target mass now sits on the class D
    # rejects by a margin of 8.
    real_part = losses.local_adversarial_loss(says_real, REAL, 0.1)
    assert torch.allclose(smoothed - plain, real_part - losses.local_adversarial_loss(says_real, REAL), atol=1e-6)
    assert math.isclose(float(real_part), 0.9 * math.log1p(math.exp(-8)) + 0.1 * (8 + math.log1p(math.exp(-8))), rel_tol=1e-4)


def test_self_regularisation_psi_variants():
    x = torch.rand(2, 3, 8, 8)
    assert losses.self_regularisation(x, x) == 0
    shifted = x + 0.1
    assert abs(float(losses.self_regularisation(shifted, x)) - 0.1) < 1e-6
    # channel mean: a colour change that keeps the mean is free.
    swapped = x[:, [2, 0, 1]]
    assert losses.self_regularisation(swapped, x, "channel_mean") < 1e-6
    assert losses.self_regularisation(swapped, x, "identity") > 0.1
    # blur: a fine checkerboard added to a flat image is mostly blurred away.
    flat = torch.full((1, 1, 8, 8), 0.5)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 0.2 - 0.1
    textured = flat + checker
    assert losses.self_regularisation(textured, flat, "blur") < 0.2 * losses.self_regularisation(textured, flat)


def test_normalised_psi_ignores_brightness_contrast_and_polarity_but_not_moved_strokes():
    from pipeline.training.losses import psi, self_regularisation

    x = torch.zeros(2, 1, 12, 12)
    x[:, :, 3:9, 5:7] = 1.0
    faded = 0.35 + 0.3 * x
    assert self_regularisation(faded, x, "normalised") < 1e-5
    assert self_regularisation(1 - x, x, "normalised") < 1e-5
    assert self_regularisation(faded, x, "identity") > 0.3  # what identity psi charges for the same change
    moved = torch.roll(x, 3, dims=3)
    assert self_regularisation(moved, x, "normalised") > 0.5
    assert psi(x, "normalised").shape == x.shape
