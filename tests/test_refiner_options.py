"""The options beyond the paper: the residual output form, the learned deformation, the
label-consistency loss, spectral normalisation in D, the fitted glyph size, stroke width,
tone curve, uneven lighting, sensor grain and blur, and the noise channel. Each test fails if its option does nothing."""

import pytest
import torch

from pipeline.errors import UserError
from pipeline.models import (
    Blur, Deformation, Discriminator, GlyphSize, Grain, Refiner, RefinerSpec, Shading, StrokeWidth, ToneMap,
    discriminator_preset, image_noise,
)
from pipeline.refiner_file import load_refiner, save_refiner
from pipeline.training import losses, task
from pipeline.training.tone import (
    fit_blur, fit_glyph_size, fit_grain, fit_input_changes, fit_shading, fit_stroke_width, fit_tone_table, keep_labels,
    noise_level, paper_fields, scaled_curve, sharpness, unevenness,
)
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


def _fitted_module(module, buffers):
    for name, value in buffers.items():
        getattr(module, name).copy_(value)
    return module


def _strokes(n=200, width=2, seed=0):
    """Binary vertical strokes at random columns: a stand-in for rendered glyphs."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 16, 16)
    for image, column in zip(images, torch.randint(3, 11, (n,), generator=g)):
        image[0, 3:13, column : column + width] = 1.0
    return images


def test_the_tone_curve_is_fitted_to_the_real_extremes_and_picks_the_polarity():
    synthetic = _strokes()
    assert torch.equal(ToneMap(1)(synthetic), synthetic)  # the identity until fitted
    faded = 0.35 + 0.3 * _strokes(seed=1)  # grey paper, grey ink
    table, direction = fit_tone_table(synthetic, faded)
    assert direction == "rising"
    assert abs(table[0, 0] - 0.35) < 0.02 and abs(table[0, -1] - 0.65) < 0.02
    table, direction = fit_tone_table(synthetic, 1 - _strokes(seed=1))  # dark ink on light paper
    assert direction == "falling" and table[0, 0] > 0.95 and table[0, -1] < 0.05
    # Thicker real strokes (twice the ink) must not turn the background grey, as a
    # histogram match would.
    table, direction = fit_tone_table(synthetic, _strokes(width=4, seed=1))
    assert direction == "rising" and table[0, 0] < 0.02 and table[0, -1] > 0.98


@pytest.mark.parametrize("polarity", ["light ink", "dark ink"])
def test_the_tone_curve_finds_a_grey_paper_under_heavy_noise(polarity):
    # Paper at 0.12 under noise of 0.16, clipped: even median filtered, a fifth of the
    # paper lies below 0.05, so its 1st percentile would call it black.
    g = torch.Generator().manual_seed(4)
    noisy = (0.12 + 0.88 * _strokes(300, seed=1) + 0.16 * torch.randn(300, 1, 16, 16, generator=g)).clamp(0, 1)
    synthetic = _strokes()
    if polarity == "dark ink":
        noisy, synthetic = 1 - noisy, 1 - synthetic
    table, _ = fit_tone_table(synthetic, noisy)
    paper = table[0, 0] if polarity == "light ink" else 1 - table[0, -1]
    assert 0.07 < paper < 0.14


def _fitted_stroke(synthetic, real):
    return _fitted_module(StrokeWidth(), fit_stroke_width(synthetic, real))


@pytest.mark.parametrize("real_pen, real_look", [
    (5, lambda x: x),  # a broader pen
    (1, lambda x: x),  # a finer pen
    (5, lambda x: 1 - (0.35 + 0.3 * x)),  # a broader pen, faded, dark on light
])
@pytest.mark.parametrize("synthetic_look", [lambda x: x, lambda x: 1 - x], ids=["light-ink", "dark-ink"])
def test_the_stroke_width_curve_gives_synthetic_strokes_the_real_pen(real_pen, real_look, synthetic_look):
    synthetic = synthetic_look(_strokes(width=3))
    assert torch.equal(StrokeWidth()(synthetic), synthetic)  # the identity until fitted
    stroke = _fitted_stroke(synthetic, real_look(_strokes(width=real_pen, seed=1)))
    # Widths on the simulator's own scale: what its strokes would measure with the real pen.
    wanted = stroke.widths(synthetic_look(_strokes(width=real_pen, seed=2))).median()
    before = stroke.widths(synthetic).median()
    adjusted = stroke(synthetic)
    after = stroke.widths(adjusted).median()
    assert abs(after - wanted) < 0.35 * abs(before - wanted)
    # Paper stays paper and ink stays in the rendering's range.
    assert adjusted.min() >= synthetic.min() and adjusted.max() <= synthetic.max()
    assert torch.equal(adjusted[..., :, :1], synthetic[..., :, :1])


def _rings(n, radii, seed, width=1.6):
    """Rings of random radius in `radii` around random centres near the middle of 24x24
    images: glyphs of several sizes."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    radius = radii[0] + (radii[1] - radii[0]) * torch.rand(n, 1, 1, generator=g)
    centre = 11.5 + 2 * (torch.rand(n, 2, 1, 1, generator=g) - 0.5)
    distance = torch.sqrt((ys - centre[:, 0]) ** 2 + (xs - centre[:, 1]) ** 2)
    return ((width / 2 + 0.5 - (distance - radius).abs()).clamp(0, 1)).unsqueeze(1)


@pytest.mark.parametrize("real_look", [lambda x: x, lambda x: 0.9 - 0.6 * x], ids=["same-look", "faded-dark-ink"])
def test_the_size_curve_zooms_each_glyph_to_the_real_sizes_about_its_centre(real_look):
    synthetic = _rings(300, (4.0, 6.0), seed=0)
    assert torch.equal(GlyphSize()(synthetic), synthetic)  # the identity until fitted
    real = real_look(_rings(300, (5.5, 8.0), seed=1, width=2.5))  # larger, another pen and look
    size = _fitted_module(GlyphSize(), fit_glyph_size(synthetic, real))
    wanted = size.sizes(_rings(300, (5.5, 8.0), seed=2)).median()
    before, zoomed = size.sizes(synthetic), size(synthetic)
    after = size.sizes(zoomed)
    assert abs(after.median() - wanted) < 0.15 * abs(before.median() - wanted)
    assert (after > before).all()  # small glyphs grow, and the order of sizes is kept
    ranks = torch.stack([after.argsort().argsort(), before.argsort().argsort()]).float()
    assert torch.corrcoef(ranks)[0, 1] > 0.95
    cy, cx, _ = size._centred(synthetic)
    zy, zx, _ = size._centred(zoomed)
    # The centre stays (to the resampling's rounding of thin strokes).
    assert (zy - cy).abs().mean() < 0.1 and (zx - cx).abs().mean() < 0.1 and (zy - cy).abs().max() < 0.4
    assert zoomed.min() >= 0 and zoomed.max() <= 1
    assert torch.allclose(size(synthetic[7:9]), zoomed[7:9], atol=1e-6)  # not on the batch it is in
    # The same real glyphs shrink what is larger than they are.
    shrink = _fitted_module(GlyphSize(), fit_glyph_size(_rings(300, (8.0, 10.0), seed=3), real))
    large = _rings(300, (8.0, 10.0), seed=3)
    assert size.sizes(shrink(large)).median() < size.sizes(large).median() - 1


def test_the_size_curve_in_bfloat16_moves_the_glyphs_as_in_float32():
    # The stage refines in bfloat16 where that keeps every output within one 8-bit step;
    # centres summed over the image in bfloat16 would shift every glyph.
    synthetic = _rings(64, (4.0, 6.0), seed=0)
    size = _fitted_module(GlyphSize(), fit_glyph_size(synthetic, _rings(64, (5.5, 8.0), seed=1)))
    half = synthetic.bfloat16()
    zoomed, expected = size(half), size(half.float())
    assert zoomed.dtype == torch.bfloat16
    assert (zoomed.float() - expected).abs().max() <= 1 / 255


class _ReadsSize(torch.nn.Module):
    """A stand-in task network whose class is whether a glyph's ink spreads further than
    `limit` pixels from its centre."""

    kind = task.CLASSIFICATION

    def __init__(self, limit: float):
        super().__init__()
        self.limit = limit

    def forward(self, x):
        size = GlyphSize().sizes(x)
        return torch.stack([self.limit - size, size - self.limit], dim=1)


def test_the_size_curve_comes_first_reaches_the_refiner_and_is_scaled_back_to_keep_labels():
    synthetic, real = _rings(200, (4.0, 5.0), seed=0), _rings(200, (5.5, 6.5), seed=1)
    config = tiny_config(glyph_size=True, stroke_width=True)
    fitted, kept = fit_input_changes(config, synthetic, real)
    assert kept == {}
    state = build_state(config, (1, 24, 24), real, fitted=fitted)
    with torch.no_grad():
        adjusted = state.refiner.parts(synthetic)[1]
    sizes = GlyphSize().sizes
    assert abs(sizes(adjusted).median() - sizes(real).median()) < 0.25
    # The stroke curve is fitted to the zoomed glyphs: the pen stays the real one.
    widths = StrokeWidth().widths
    assert abs(widths(adjusted).median() - widths(real).median()) < 0.3
    # A task network that reads large glyphs as another class keeps only part of the zoom.
    network = _ReadsSize(5.5)
    assert task.consistency(network, synthetic, adjusted) < 0.2
    fitted, kept = fit_input_changes(config, synthetic, real, network, synthetic)
    assert 0.1 < kept["size"] < 0.9
    state = build_state(config, (1, 24, 24), real, fitted=fitted)
    with torch.no_grad():
        zoomed = state.refiner.size(synthetic)
    assert task.consistency(network, synthetic, zoomed) >= 0.95
    assert sizes(zoomed).median() > sizes(synthetic).median() + 0.2


def test_with_a_tone_curve_the_refiner_is_regularised_towards_the_tone_mapped_input():
    synthetic = _strokes(64)
    faded = 0.35 + 0.3 * _strokes(64, seed=1)
    config = tiny_config(pretrain_refiner_steps=30, pretrain_discriminator_steps=0, iterations=0, tone_map=True,
                         lr_refiner=2e-3)
    table, _ = fit_tone_table(synthetic, faded)
    state = build_state(config, (1, 16, 16), faded, fitted={"tone": {"table": table}})
    for _ in range(config.total_steps):
        train_step(state, config, synthetic, faded)
    with torch.no_grad():
        refined = state.refiner(synthetic)
    # Pre-training (self-regularisation only) converges on the tone-mapped image: grey
    # paper and grey ink, with no adversarial step taken.
    assert abs(refined[synthetic == 0].mean() - 0.35) < 0.05
    assert abs(refined[synthetic == 1].mean() - 0.65) < 0.05


def test_image_noise_depends_only_on_the_image_and_feeds_the_refiner():
    images = torch.rand(6, 1, 10, 10)
    noise = image_noise(images)
    assert torch.equal(noise[2:4], image_noise(images[2:4]))  # not on the batch it is in
    assert abs(noise.mean()) < 0.15 and abs(noise.std() - 1) < 0.15
    assert (noise[0] - noise[1]).abs().mean() > 0.5  # another image, other noise
    changed = images.clone()
    changed[0, 0, 9, 9] = (changed[0, 0, 9, 9] + 0.5) % 1
    assert (image_noise(changed)[0] - noise[0]).abs().mean() > 0.5
    refiner = Refiner(RefinerSpec(**SMALL, noise=True))
    flat = torch.full((2, 1, 10, 10), 0.5)
    flat[1, 0, 0, 0] = 0.6  # the same picture but one pixel: other noise
    with torch.no_grad():
        refiner.conv_out.weight.normal_(std=1.0)
        out = refiner(flat)
    # A plain refiner maps a flat image to a flat image; with noise it has grain.
    assert out[0, 0, 4:8, 4:8].std() > 0.01
    assert (out[0, 0, 4:8, 4:8] - out[1, 0, 4:8, 4:8]).abs().mean() > 0.01


class _ReadsWidth(torch.nn.Module):
    """A stand-in task network whose class is whether a stroke is wider than `limit`
    pixels (ink per row of a 10-row stroke)."""

    kind = task.CLASSIFICATION

    def __init__(self, limit: float):
        super().__init__()
        self.limit = limit

    def forward(self, x):
        width = x.sum(dim=(1, 2, 3)) / 10
        return torch.stack([self.limit - width, width - self.limit], dim=1)


def _scaled_stroke(buffers):
    return lambda fraction: _fitted_module(StrokeWidth(), scaled_curve(buffers, fraction))


def test_the_stroke_curve_is_scaled_back_until_the_task_network_reads_the_same_labels():
    synthetic = _strokes(100, width=2)
    broad = fit_stroke_width(synthetic, _strokes(100, width=6, seed=1))  # a pen 4 px broader
    # A task network that does not care keeps the whole change.
    assert keep_labels(_scaled_stroke(broad), _ReadsWidth(100.0), synthetic, 0.95) == 1.0
    # One that calls a stroke over 3.5 px something else: all of it would flip every label.
    network = _ReadsWidth(3.5)
    assert task.consistency(network, synthetic, _scaled_stroke(broad)(1.0)(synthetic)) < 0.1
    fraction = keep_labels(_scaled_stroke(broad), network, synthetic, 0.95)
    assert 0.1 < fraction < 0.6
    adjusted = _scaled_stroke(broad)(fraction)(synthetic)
    assert task.consistency(network, synthetic, adjusted) >= 0.95
    assert adjusted.sum() > synthetic.sum() * 1.1  # still broader than the simulator's pen


def _blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    return _fitted_module(Blur(images.shape[1]), {"sigma": torch.full((images.shape[1],), sigma)})(images)


def test_blur_is_the_identity_at_zero_and_blurs_each_image_on_its_own():
    x = _strokes(8, width=3)
    assert torch.equal(Blur(1)(x), x)
    y = _blurred(x, 1.0)
    assert torch.allclose(y.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), rtol=0.02)  # ink spread, not lost
    assert y.max() < 0.9 and (y[x == 0] > 0.05).any()  # the edges are soft now
    assert torch.equal(_blurred(x[3:5], 1.0), y[3:5])  # not on the batch it is in
    # Channels have their own sigma; a channel at zero passes unchanged.
    two = torch.cat([x, x], dim=1)
    out = _fitted_module(Blur(2), {"sigma": torch.tensor([0.0, 1.0])})(two)
    assert torch.equal(out[:, :1], x) and torch.allclose(out[:, 1:], y, atol=1e-6)


@pytest.mark.parametrize("look", [lambda x: x, lambda x: 0.8 - 0.5 * x], ids=["light-ink", "faded-dark-ink"])
def test_blur_is_fitted_to_the_sharpness_the_real_edges_have(look):
    synthetic = _strokes(300, width=3)
    assert sharpness(synthetic).item() == pytest.approx(1.0)  # a hard rendering
    assert sharpness(_blurred(synthetic, 1.0)) < sharpness(_blurred(synthetic, 0.5)) < 0.9
    # Real strokes of another width, tone and polarity, blurred by 1 px: the fit finds the blur.
    real = look(_blurred(_strokes(300, width=4, seed=1), 1.0))
    assert abs(fit_blur(synthetic, real)["sigma"].item() - 1.0) < 0.15
    # Real edges as sharp as the synthetic ones, or sharper: no blur, never a sharpening.
    assert fit_blur(synthetic, look(_strokes(300, width=4, seed=1)))["sigma"].item() == 0.0
    assert fit_blur(_blurred(synthetic, 1.0), _strokes(300, seed=1))["sigma"].item() == 0.0
    # Through sensor noise (measured on median-filtered images, as the other fits are).
    noisy = (0.2 + 0.5 * _blurred(_strokes(300, width=4, seed=1), 1.0)
             + 0.05 * torch.randn(300, 1, 16, 16, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    assert abs(fit_blur(synthetic, noisy)["sigma"].item() - 1.0) < 0.3


class _ReadsPeak(torch.nn.Module):
    """A stand-in task network whose class is whether an image's brightest pixel
    reaches `limit`: a blur dims thin strokes' peaks and so flips it."""

    kind = task.CLASSIFICATION

    def __init__(self, limit: float):
        super().__init__()
        self.limit = limit

    def forward(self, x):
        peak = x.amax(dim=(1, 2, 3))
        return torch.stack([self.limit - peak, peak - self.limit], dim=1)


def test_the_fitted_blur_reaches_the_refiner_and_is_scaled_back_to_keep_labels():
    synthetic = _strokes(200, width=2)
    real = _blurred(_strokes(200, width=2, seed=1), 1.2)
    config = tiny_config(blur=True, tone_map=True)
    fitted, kept = fit_input_changes(config, synthetic, real)
    assert abs(fitted["blur"]["sigma"].item() - 1.2) < 0.2 and kept == {}
    state = build_state(config, (1, 16, 16), real, fitted=fitted)
    with torch.no_grad():
        assert abs(sharpness(state.refiner.parts(synthetic)[1]) - sharpness(real)) < 0.05
    # A task network that a 1.2 px blur would fool keeps only part of it.
    network = _ReadsPeak(0.7)
    assert task.consistency(network, synthetic, _blurred(synthetic, 1.2)) < 0.1
    fitted, kept = fit_input_changes(config, synthetic, real, network, synthetic)
    assert 0.1 < kept["blur"] < 0.9
    assert fitted["blur"]["sigma"].item() == pytest.approx(1.2 * kept["blur"], rel=0.2)
    assert task.consistency(network, synthetic, _blurred(synthetic, fitted["blur"]["sigma"].item())) >= 0.95


def _pairs(n=300, width=2, gap=2, seed=0):
    """Two binary vertical strokes `gap` pixels apart: a blur merges them, as it merges
    the close strokes of a real 8 or a 4."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 16, 16)
    for image, column in zip(images, torch.randint(2, 8, (n,), generator=g)):
        image[0, 3:13, column : column + width] = 1.0
        image[0, 3:13, column + width + gap : column + 2 * width + gap] = 1.0
    return images


@pytest.mark.parametrize("gap", [1, 2, 3])
def test_the_stroke_curve_foresees_the_blur_that_follows_it(gap):
    synthetic = _pairs(gap=gap)
    real = _blurred(_pairs(gap=gap, seed=1), 1.2)  # the simulator's own pen, out of focus
    widths = StrokeWidth().widths
    config = tiny_config(stroke_width=True, blur=True)
    fitted, _ = fit_input_changes(config, synthetic, real)
    state = build_state(config, (1, 16, 16), real, fitted=fitted)
    with torch.no_grad():
        stroked, adjusted = state.refiner.stroke(synthetic), state.refiner.parts(synthetic)[1]
    assert abs(widths(stroked).median() - widths(synthetic).median()) < 0.1  # the pen stays the simulator's
    assert abs(sharpness(adjusted) - sharpness(real)) < 0.05
    # Fitted without the blur ahead, the same real images ask for a pen that merges the strokes.
    alone = _fitted_module(StrokeWidth(), fit_stroke_width(synthetic, real))
    assert widths(alone(synthetic)).median() > widths(synthetic).median() + 0.5


def _grainy(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Strokes on mid-grey paper (so that clipping does not hide the noise) with noise."""
    g = torch.Generator().manual_seed(seed)
    return (0.3 + 0.4 * images + sigma * torch.randn(images.shape, generator=g)).clamp(0, 1)


def test_grain_is_fitted_to_the_noise_the_synthetic_images_lack():
    synthetic = 0.3 + 0.4 * _strokes(300)
    assert noise_level(synthetic).item() == 0.0  # a clean rendering
    real = _grainy(_strokes(300, seed=1), 0.06)
    assert abs(noise_level(real).item() - 0.06) < 0.008  # the glyphs' edges do not count
    assert abs(fit_grain(synthetic, real)["sigma"].item() - 0.06) < 0.008
    # Real images as clean as the synthetic ones, or no noisier: no grain at all.
    assert fit_grain(synthetic, 0.3 + 0.4 * _strokes(300, seed=1))["sigma"].item() == 0.0
    assert fit_grain(_grainy(_strokes(300), 0.06, seed=2), real)["sigma"].item() == 0.0
    # Variances add: real noise 0.06 over synthetic noise 0.03 leaves about 0.052.
    assert abs(fit_grain(_grainy(_strokes(300), 0.03, seed=2), real)["sigma"].item() - 0.052) < 0.01
    # Noise clipped at black hides part of itself, in the real images and in the grain
    # alike: on black paper the fit finds the noise that was added, not the part left.
    clipped = (_strokes(300, seed=1) + 0.06 * torch.randn(300, 1, 16, 16, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    assert noise_level(clipped).item() < 0.045
    assert abs(fit_grain(_strokes(300), clipped)["sigma"].item() - 0.06) < 0.01


def test_grain_is_the_identity_at_zero_and_the_same_noise_for_the_same_image():
    grain = Grain(1)
    x = 0.3 + 0.4 * _strokes(8)
    assert torch.equal(grain(x), x)
    grain.sigma.fill_(0.05)
    y = grain(x)
    assert abs((y - x).std().item() - 0.05) < 0.01 and y.min() >= 0 and y.max() <= 1
    assert torch.equal(grain(x[3:5]), y[3:5])  # not on the batch it is in, nor on a generator
    assert (y[0] - x[0] - (y[1] - x[1])).abs().mean() > 0.02  # another image, other grain


def test_fitted_grain_reaches_the_refined_images():
    synthetic, real = 0.3 + 0.4 * _strokes(64), _grainy(_strokes(64, seed=1), 0.06)
    config = tiny_config(grain=True)
    state = build_state(config, (1, 16, 16), real, fitted={"grain": fit_grain(synthetic, real)})
    with torch.no_grad():
        refined = state.refiner(synthetic)
        plain = Refiner(RefinerSpec(**{**state.refiner.spec.to_dict(), "grain": False}))
        plain.load_state_dict({k: v for k, v in state.refiner.state_dict().items() if not k.startswith("grain.")})
    assert noise_level(plain(synthetic)).item() < 0.005
    assert abs(noise_level(refined).item() - 0.06) < 0.015


@pytest.mark.parametrize("module, option, fit, off", [
    ("grain", "grain", fit_grain, lambda buffers: buffers["sigma"].item() == 0.0),
    ("shading", "shading", fit_shading, lambda buffers: not buffers["fields"].any()),
])
def test_a_change_fitted_to_nothing_leaves_training_exactly_as_without_it(module, option, fit, off):
    # Domains as clean and as evenly lit as the simulator get no grain and no shading:
    # their refiners must be the ones trained before these existed, bit for bit.
    synthetic = _strokes(32)
    real = 0.1 + 0.6 * _strokes(32, seed=1)
    weights = []
    for on in (False, True):
        config = tiny_config(**{option: on}, iterations=3)
        fitted = {module: fit(synthetic, real)} if on else None
        torch.manual_seed(0)
        state = build_state(config, (1, 16, 16), real, fitted=fitted)
        for _ in range(config.total_steps):
            train_step(state, config, synthetic, real)
        weights.append({k: v for k, v in state.refiner.state_dict().items() if not k.startswith(f"{module}.")})
    assert off(fitted[module])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _lamp_lit(images: torch.Tensor, strength: float, seed: int = 0) -> torch.Tensor:
    """Bright ink on paper brightening from 0 to `strength` across each image, in a
    direction drawn per image: a photo of paper under a lamp."""
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = images.shape
    angle = 2 * torch.pi * torch.rand(n, 1, 1, 1, generator=g)
    ys, xs = torch.meshgrid(torch.linspace(-0.5, 0.5, h), torch.linspace(-0.5, 0.5, w), indexing="ij")
    ramp = torch.cos(angle) * xs + torch.sin(angle) * ys
    ramp = (ramp - ramp.amin(dim=(2, 3), keepdim=True)) / (ramp.amax(dim=(2, 3), keepdim=True) - ramp.amin(dim=(2, 3), keepdim=True))
    return torch.maximum(images, strength * ramp)


def test_shading_lights_the_synthetic_paper_as_the_real_paper_is_lit_and_leaves_the_ink():
    synthetic, real = _strokes(300), _lamp_lit(_strokes(300, seed=1), 0.3)
    config = tiny_config(tone_map=True, shading=True)
    fitted, _ = fit_input_changes(config, synthetic, real)
    state = build_state(config, (1, 16, 16), real, fitted=fitted)
    with torch.no_grad():
        toned, shaded = state.refiner.tone(synthetic), state.refiner.parts(synthetic)[1]
    uneven = {name: unevenness(paper_fields(images), 16, 16).item() for name, images in
              (("toned", toned), ("shaded", shaded), ("real", real))}
    assert uneven["toned"] < 0.005 and uneven["real"] > 0.05
    assert abs(uneven["shaded"] - uneven["real"]) < 0.01
    # Each page as bright on the whole as a real one, the brightening in its own direction.
    levels = {name: images[images < 0.5].mean().item() for name, images in (("shaded", shaded), ("real", real))}
    assert abs(levels["shaded"] - levels["real"]) < 0.02
    fields = paper_fields(shaded)[:, 0, 1:3]  # each page's slope along u and v
    assert (fields[:, 0] > 0.05).any() and (fields[:, 0] < -0.05).any() and (fields[:, 1] > 0.05).any()
    assert torch.equal(shaded[toned > 0.9], toned[toned > 0.9])  # the ink is left as it is
    # Real paper as evenly lit, or no more uneven than the synthetic: no shading at all.
    assert not fit_shading(synthetic, 0.1 + 0.6 * _strokes(300, seed=1))["fields"].any()
    assert not fit_shading(_lamp_lit(synthetic, 0.3, seed=2), real)["fields"].any()
    # Noise on even paper is not taken for uneven light.
    assert not fit_shading(synthetic, _grainy(_strokes(300, seed=1), 0.1))["fields"].any()


def test_shading_is_the_identity_when_off_and_the_same_for_the_same_image():
    shading = Shading(1)
    x = _strokes(16) * torch.linspace(0.6, 1.0, 16).view(-1, 1, 1, 1)  # sixteen different images
    assert torch.equal(shading(x), x)
    with torch.no_grad():
        shading.fields[:, 0, 1] = torch.linspace(-0.2, 0.2, Shading.BANK)  # ramps along u, each its own slope
    y = shading(x)
    assert y.min() >= 0 and y.max() <= 1 and not torch.equal(y, x)
    assert torch.equal(shading(x[3:5]), y[3:5])  # not on the batch it is in, nor on a generator
    slopes = (y[:, 0, 0, -1] - y[:, 0, 0, 0])
    assert len(set(slopes.tolist())) > 8  # other images, other lighting


def test_the_fitted_input_changes_and_noise_travel_in_the_refiner_file(tmp_path):
    refiner = Refiner(RefinerSpec(**SMALL, tone_map=True, noise=True, stroke=True, grain=True, blur=True, size=True,
                                  shading=True))
    with torch.no_grad():
        refiner.shading.fields[:, 0, 0] = 0.1  # every page's paper 0.1 brighter
        refiner.size.target.mul_(1.3)  # every glyph 30 % larger
        refiner.blur.sigma.fill_(0.7)
        refiner.tone.table.copy_(0.2 + 0.5 * torch.linspace(0, 1, ToneMap.LEVELS)[None])
        refiner.stroke.target.add_(1.0)  # every stroke a pixel wider
        refiner.grain.sigma.fill_(0.05)
    path = str(tmp_path / "refiner.safetensors")
    save_refiner(path, refiner, "digits", 16, 16)
    loaded, info = load_refiner(path)
    assert info.spec.tone_map and info.spec.noise and info.spec.stroke and info.spec.grain and info.spec.blur
    assert info.spec.size and info.spec.shading
    x = _strokes(4)
    with torch.no_grad():
        assert torch.allclose(loaded(x), refiner.eval()(x))
        assert loaded.tone(x).min() >= 0.19
        assert loaded.stroke(x).sum() > x.sum() * 1.2
        assert loaded.grain.sigma.item() == pytest.approx(0.05)
        assert loaded.blur.sigma.item() == pytest.approx(0.7)
        assert loaded.shading(x)[x == 0].min().item() == pytest.approx(0.1)
        assert loaded.size.sizes(loaded.size(x)).mean() > 1.2 * loaded.size.sizes(x).mean()


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
