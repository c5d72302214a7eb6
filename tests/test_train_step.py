import pytest
import torch

from pipeline.training.step import (
    ADVERSARIAL,
    PRETRAIN_DISCRIMINATOR,
    PRETRAIN_REFINER,
    build_state,
    phase,
    refiner_update,
    step_generator,
    train_step,
)
from helpers.train import pools, tiny_config


def _adam_steps(optimizer) -> int:
    """How many times an Adam optimiser has stepped (it counts per parameter)."""
    counts = {int(s["step"]) for s in optimizer.state.values()}
    assert len(counts) <= 1
    return counts.pop() if counts else 0


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _changed(before, model):
    return any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("k_g,k_d", [(1, 1), (2, 1), (3, 2)])
def test_exactly_k_g_refiner_and_k_d_discriminator_updates_per_iteration(k_g, k_d):
    config = tiny_config(pretrain_refiner_steps=2, pretrain_discriminator_steps=3, iterations=2, k_g=k_g, k_d=k_d)
    synthetic, real = pools()
    state = build_state(config, (1, 12, 12), real)
    for _ in range(config.total_steps):
        train_step(state, config, synthetic, real)
    assert _adam_steps(state.opt_r) == 2 + 2 * k_g
    assert _adam_steps(state.opt_d) == 3 + 2 * k_d


def test_pretraining_phases_have_their_step_counts_and_touch_one_network_each():
    config = tiny_config(pretrain_refiner_steps=3, pretrain_discriminator_steps=2, iterations=2)
    assert [phase(config, s) for s in range(config.total_steps)] == (
        [PRETRAIN_REFINER] * 3 + [PRETRAIN_DISCRIMINATOR] * 2 + [ADVERSARIAL] * 2
    )
    synthetic, real = pools()
    state = build_state(config, (1, 12, 12), real)
    for expected in [PRETRAIN_REFINER] * 3 + [PRETRAIN_DISCRIMINATOR] * 2 + [ADVERSARIAL] * 2:
        r, d = _params(state.refiner), _params(state.discriminator)
        metrics = train_step(state, config, synthetic, real)
        assert metrics["phase"] == expected
        assert _changed(r, state.refiner) == (expected != PRETRAIN_DISCRIMINATOR)
        assert _changed(d, state.discriminator) == (expected != PRETRAIN_REFINER)
        # Refiner pre-training is self-regularisation only.
        assert ("loss_r_adv" in metrics) == (expected == ADVERSARIAL)
    assert state.step == config.total_steps


@pytest.mark.parametrize("feature_matching", [False, True])
def test_refiner_update_leaves_no_gradient_on_the_discriminator(feature_matching):
    config = tiny_config(pretrain_refiner_steps=0, pretrain_discriminator_steps=0, iterations=1,
                         feature_matching=feature_matching)
    synthetic, real = pools()
    state = build_state(config, (1, 12, 12), real)
    r = _params(state.refiner)
    # The refiner's update alone: a discriminator update after it would clear D's
    # gradients before anyone could see them.
    refiner_update(state, config, synthetic, real, step_generator(config.seed, 0), adversarial=True)
    assert _changed(r, state.refiner)
    assert all(p.grad is None for p in state.discriminator.parameters())
    # Unfrozen again for its own update.
    assert all(p.requires_grad for p in state.discriminator.parameters())


def test_adversarial_training_moves_d_towards_telling_real_from_refined():
    config = tiny_config(pretrain_refiner_steps=0, pretrain_discriminator_steps=30, iterations=0,
                         lr_discriminator=2e-3)
    synthetic, real = pools(n=64)
    state = build_state(config, (1, 12, 12), real)
    losses = [train_step(state, config, synthetic, real)["loss_d"] for _ in range(config.total_steps)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_same_seed_same_result_other_seed_other_result():
    synthetic, real = pools()

    def run(seed):
        config = tiny_config(seed=seed, pretrain_refiner_steps=1, pretrain_discriminator_steps=1, iterations=1)
        state = build_state(config, (1, 12, 12), real)
        for _ in range(config.total_steps):
            train_step(state, config, synthetic, real)
        return torch.cat([p.flatten() for p in state.refiner.parameters()])

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
