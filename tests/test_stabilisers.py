import torch

from pipeline.models import Discriminator, discriminator_preset
from pipeline.training import losses
from pipeline.training.stabilisers import HistoricalAverage, feature_matching_loss, reference_batch
from pipeline.training.step import build_state, train_step
from helpers.train import pools, tiny_config


def _refiner_after_adversarial_steps(**changes):
    config = tiny_config(**{"pretrain_refiner_steps": 0, "pretrain_discriminator_steps": 1, "iterations": 2, **changes})
    synthetic, real = pools()
    state = build_state(config, (1, 12, 12), real)
    metrics = [train_step(state, config, synthetic, real) for _ in range(config.total_steps)]
    return state, metrics


def test_feature_matching_replaces_the_adversarial_term():
    a = torch.randn(6, 4, 3, 3)
    assert feature_matching_loss(a, a[torch.randperm(6)]) < 1e-9  # same batch statistics
    assert feature_matching_loss(a, a + 1.0) > 30  # 36 feature positions, each off by 1
    _, plain = _refiner_after_adversarial_steps()
    _, matched = _refiner_after_adversarial_steps(feature_matching=True)
    # Same networks, data and D pre-training; the refiner's first adversarial term
    # differs: about log 2 as a cross-entropy, a small squared distance as matching.
    assert plain[0]["loss_d"] == matched[0]["loss_d"]
    assert abs(plain[1]["loss_r_adv"] - 0.69) < 0.2
    assert 0 <= matched[1]["loss_r_adv"] < 0.3


def test_minibatch_discrimination_makes_a_sample_depend_on_its_batch():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    others = torch.rand(4, 1, 28, 28)
    for kernels, depends in ((0, False), (4, True)):
        torch.manual_seed(0)
        d = Discriminator(discriminator_preset("digits", minibatch_kernels=kernels))
        first = d(torch.cat([x[:1], x[1:]]))[0]
        mixed = d(torch.cat([x[:1], others[1:]]))[0]
        assert (not torch.allclose(first, mixed, atol=1e-6)) == depends
    # A collapsed batch (all alike) gives the largest closeness features.
    torch.manual_seed(0)
    d = Discriminator(discriminator_preset("digits", minibatch_kernels=4))
    same = d.minibatch(torch.ones(4, 32, 7, 7))[:, 32:]
    varied = d.minibatch(torch.randn(4, 32, 7, 7) * 5)[:, 32:]
    assert same.mean() > varied.mean()


def test_virtual_batch_norm_uses_the_reference_not_the_batch():
    torch.manual_seed(0)
    d = Discriminator(discriminator_preset("digits", virtual_batch_norm=True))
    x, others, reference = torch.rand(3, 1, 28, 28), torch.rand(3, 1, 28, 28), torch.rand(8, 1, 28, 28)
    alone = d(x[:1], reference=reference)
    in_batch = d(torch.cat([x[:1], others[1:]]), reference=reference)[:1]
    assert torch.allclose(alone, in_batch, atol=1e-5)  # unlike batch norm
    assert not torch.allclose(alone, d(x[:1], reference=reference * 0.5), atol=1e-4)
    # The reference batch is fixed by the seed, and kept in the training state.
    real = torch.rand(20, 1, 4, 4)
    assert torch.equal(reference_batch(real, 5, seed=3), reference_batch(real, 5, seed=3))
    state = build_state(tiny_config(virtual_batch_norm=True), (1, 12, 12), pools()[1])
    assert state.reference is not None and state.reference.shape == (8, 1, 12, 12)


def test_historical_averaging_pulls_parameters_back_towards_their_past_mean():
    model = torch.nn.Linear(3, 1)
    average = HistoricalAverage(model)
    assert average.penalty(model) == 0
    with torch.no_grad():
        model.weight += 1.0
    assert abs(average.penalty(model).item() - 3.0) < 1e-5  # three weights, each 1 away
    average.update(model)
    assert abs(average.penalty(model).item() - 3 * 0.25) < 1e-5  # mean moved half way

    plain, _ = _refiner_after_adversarial_steps()
    averaged, _ = _refiner_after_adversarial_steps(historical_averaging=100.0)
    assert averaged.average_r is not None and averaged.average_r.count > 1
    start, _ = _refiner_after_adversarial_steps(iterations=0)
    moved = lambda s: sum((p - q).abs().sum() for p, q in zip(s.discriminator.parameters(), start.discriminator.parameters()))  # noqa: E731
    assert moved(averaged) < moved(plain)


def test_one_sided_label_smoothing_changes_only_the_real_term_in_training():
    logits = torch.randn(4, 2, 3, 3)
    assert torch.equal(losses.local_adversarial_loss(logits, 1), losses.local_adversarial_loss(logits, 1, 0.0))
    _, plain = _refiner_after_adversarial_steps()
    _, smoothed = _refiner_after_adversarial_steps(label_smoothing=0.2)
    # The first D step (pre-training) starts from identical networks and data: only the
    # smoothed real target can make its loss differ.
    assert smoothed[0]["loss_d"] != plain[0]["loss_d"]
    # Refiner pre-training is the same either way.
    _, a = _refiner_after_adversarial_steps(pretrain_refiner_steps=1)
    _, b = _refiner_after_adversarial_steps(pretrain_refiner_steps=1, label_smoothing=0.2)
    assert a[0]["loss_r"] == b[0]["loss_r"]
