"""The options beyond the paper: the residual output form, the learned deformation, the
label-consistency loss and spectral normalisation in D. Each test fails if its option
does nothing."""

import pytest
import torch

from pipeline.errors import UserError
from pipeline.models import Deformation, Discriminator, Refiner, RefinerSpec, discriminator_preset
from pipeline.training import losses, task
from pipeline.training.step import build_state, train_step
from helpers.train import pools, tiny_config

SMALL = dict(features=8, blocks=1)


def test_the_residual_form_is_the_identity_at_zero_and_not_stuck_at_binary_pixels():
    x = (torch.rand(4, 1, 12, 12) > 0.5).float()  # a binary rendering
    for output in ("logit", "residual"):
        refiner = Refiner(RefinerSpec(**SMALL, output=output))
        with torch.no_grad():
            refiner.conv_out.weight.zero_()
        assert torch.allclose(refiner(x), x, atol=2e-3)
    # The same push (delta = 1 on every pixel) moves black pixels visibly only in the
    # residual form: in logit space a pixel at 0 sits at logit(0.001) = -6.9.
    moved = {}
    for output in ("logit", "residual"):
        refiner = Refiner(RefinerSpec(**SMALL, output=output))
        with torch.no_grad():
            refiner.conv_out.weight.zero_()
            refiner.conv_out.bias.fill_(1.0)
        with torch.no_grad():
            y = refiner(x)
        assert y.min() >= 0 and y.max() <= 1
        moved[output] = float(y[x == 0].mean())
    assert moved["residual"] > 0.7 and moved["logit"] < 0.01


def test_the_deformation_starts_as_the_identity_moves_content_and_stays_bounded():
    refiner = Refiner(RefinerSpec(**SMALL, deform_pixels=2.0))
    x = torch.zeros(2, 1, 16, 16)
    x[:, :, 4:12, 7] = 1.0  # a vertical stroke
    refined, deformed, field = refiner.parts(x)
    assert torch.equal(deformed, x) or torch.allclose(deformed, x, atol=1e-5)
    assert field.abs().max() == 0
    # A constant field of one pixel to the right: the stroke is read from one column
    # further right, so it appears one column to the left.
    shifted = Deformation.warp(x, torch.stack([torch.ones(2, 16, 16), torch.zeros(2, 16, 16)], dim=1))
    assert torch.allclose(shifted[:, :, 4:12, 6], x[:, :, 4:12, 7], atol=1e-5)
    with torch.no_grad():
        refiner.deformation.net[-1].bias.fill_(50.0)
    assert refiner.deformation.field(x).abs().max() <= 2.0 + 1e-5  # bounded by deform_pixels


def test_the_deformation_penalty_grows_with_size_and_roughness():
    zero = torch.zeros(1, 2, 8, 8)
    smooth = torch.full((1, 2, 8, 8), 0.5)
    rough = smooth.clone()
    rough[..., ::2, :] = -0.5
    assert losses.deformation_penalty(zero) == 0
    assert 0 < losses.deformation_penalty(smooth) < losses.deformation_penalty(rough)


def test_training_with_a_deformation_learns_a_field_and_measures_l1_against_the_deformed_input():
    config = tiny_config(pretrain_refiner_steps=0, pretrain_discriminator_steps=0, iterations=3, deform_pixels=2.0)
    synthetic, real = pools()
    state = build_state(config, (1, 12, 12), real)
    metrics = [train_step(state, config, synthetic, real) for _ in range(3)]
    assert all("loss_r_deform" in m for m in metrics)
    field = state.refiner.deformation.field(synthetic)
    assert field.abs().max() > 0  # the adversarial gradient reached the deformation
    refined, deformed, _ = state.refiner.parts(synthetic)
    assert not torch.allclose(deformed, synthetic)


def _bars(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(1, 9, (n,), generator=g)
    images = torch.zeros(n, 1, 12, 12)
    for image, row in zip(images, rows):
        image[0, row : row + 2, 2:-2] = 1.0
    return images, [{"class": int(r) // 3} for r in rows]


def test_the_label_consistency_loss_keeps_labels_that_d_pushes_the_refiner_to_destroy():
    synthetic, labels = _bars(256)
    found = task.extract_labels(labels, "class", [str(i) for i in range(256)])
    network = task.train_task_network(synthetic, found, seed=0, steps=300)
    assert task.accuracy(network, synthetic, found) > 0.9
    # Every real bar sits at the top: to look real, a refiner bound by almost no
    # self-regularisation erases the bars, and with them the labels.
    real = torch.zeros(256, 1, 12, 12)
    real[:, :, 1:3, 2:-2] = 0.8
    kept = {}
    for weight in (0.0, 5.0):
        config = tiny_config(pretrain_refiner_steps=0, pretrain_discriminator_steps=0, iterations=40,
                             label_consistency_weight=weight, self_reg_weight=0.01, lr_refiner=2e-3,
                             refiner_output="residual")
        state = build_state(config, (1, 12, 12), real)
        state.task_network = network if weight else None
        for _ in range(config.total_steps):
            metrics = train_step(state, config, synthetic, real, labels=torch.from_numpy(found.values))
        assert ("loss_r_label" in metrics) == (weight > 0)
        with torch.no_grad():
            kept[weight] = task.accuracy(network, state.refiner(synthetic), found)
    assert kept[0.0] < 0.6 and kept[5.0] > 0.9, kept


def test_spectral_norm_bounds_each_hidden_convolution_of_d():
    d = Discriminator(discriminator_preset("digits", spectral_norm=True))
    plain = Discriminator(discriminator_preset("digits"))
    x = torch.rand(8, 1, 28, 28)
    for _ in range(20):  # the power iteration converges in training mode
        d(x)
    convs = [m.conv for m in d.layers if hasattr(m, "conv")]
    assert convs and all(torch.nn.utils.parametrize.is_parametrized(c, "weight") for c in convs)
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma < 1.1
    assert not any(torch.nn.utils.parametrize.is_parametrized(m.conv, "weight") for m in plain.layers if hasattr(m, "conv"))


@pytest.mark.parametrize("bad, message", [
    ({"refiner_output": "tanh"}, "refiner_output"),
    ({"deform_pixels": -1.0}, "deform_pixels"),
    ({"deform_weight": -0.1}, "deform_weight"),
    ({"label_consistency_weight": 1.0, "label": ""}, "needs a label"),
    ({"held_out": 0.6}, "held_out"),
    ({"min_label_consistency": 1.5}, "min_label_consistency"),
])
def test_option_values_are_checked(bad, message):
    with pytest.raises(UserError, match=message):
        tiny_config(**bad)
