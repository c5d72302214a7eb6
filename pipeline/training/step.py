"""The one training step, used by the local loop and by every Ray Train worker.

A step is one of: refiner pre-training (self-regularisation only), discriminator
pre-training, or an adversarial iteration (k_g refiner updates, then k_d discriminator
updates). Every random choice of a step (its minibatches, history slots) comes from a
generator seeded by (seed, step, rank), so a resumed run draws exactly what an
uninterrupted run would have drawn.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models import REAL, Discriminator, Refiner, RefinerSpec, discriminator_preset, refiner_preset
from pipeline.training import losses
from pipeline.training.config import TrainConfig
from pipeline.training.history import HistoryBuffer
from pipeline.training.stabilisers import HistoricalAverage, feature_matching_loss, reference_batch
from pipeline.training.task import task_loss

PRETRAIN_REFINER = "pretrain_refiner"
PRETRAIN_DISCRIMINATOR = "pretrain_discriminator"
ADVERSARIAL = "adversarial"


@dataclass
class TrainState:
    """Everything a checkpoint holds besides the config. `refiner` and `discriminator`
    may be wrapped for distributed training; `unwrap` gives the plain networks."""

    refiner: nn.Module
    discriminator: nn.Module
    opt_r: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    history: HistoryBuffer
    average_r: HistoricalAverage | None
    average_d: HistoricalAverage | None
    reference: torch.Tensor | None
    step: int = 0
    # Frozen, rebuilt from the data on every start (not checkpointed); set only when
    # the label-consistency loss is on.
    task_network: nn.Module | None = None


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper, or the network itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def make_optimizer(params, config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum)
    return torch.optim.Adam(params, lr=lr, betas=(config.adam_beta1, config.adam_beta2))


def refiner_spec(config: TrainConfig, channels: int) -> RefinerSpec:
    return refiner_preset(config.model, channels, config.refiner_output, config.deform_pixels, config.tone_map,
                          config.refiner_noise, config.stroke_width, config.grain, config.blur, config.glyph_size,
                          config.shading)


def build_networks(config: TrainConfig, channels: int) -> tuple[Refiner, Discriminator]:
    torch.manual_seed(config.seed)
    refiner = Refiner(refiner_spec(config, channels))
    discriminator = Discriminator(
        discriminator_preset(
            config.model,
            channels,
            minibatch_kernels=config.minibatch_kernels if config.minibatch_discrimination else 0,
            virtual_batch_norm=config.virtual_batch_norm,
            spectral_norm=config.spectral_norm,
        )
    )
    return refiner, discriminator


def build_state(
    config: TrainConfig,
    image_shape: tuple[int, int, int],
    real: torch.Tensor,
    device: torch.device | str = "cpu",
    wrap=lambda model: model,
    fitted: dict[str, dict[str, torch.Tensor]] | None = None,
) -> TrainState:
    """A fresh state. `wrap` turns each network into its distributed form (identity
    locally); `fitted` holds the buffers of the refiner's fitted input changes, by
    module ("size", "stroke", "blur", "tone", "shading", "grain"), as pipeline.training.tone.fit_input_changes
    makes them."""
    refiner, discriminator = build_networks(config, image_shape[0])
    for module, buffers in (fitted or {}).items():
        for name, value in buffers.items():
            getattr(getattr(refiner, module), name).copy_(value)
    refiner, discriminator = refiner.to(device), discriminator.to(device)
    reference = reference_batch(real, config.batch_size, config.seed).to(device) if config.virtual_batch_norm else None
    averaging = config.historical_averaging > 0
    state = TrainState(
        refiner=wrap(refiner),
        discriminator=wrap(discriminator),
        opt_r=make_optimizer(refiner.parameters(), config, config.lr_refiner),
        opt_d=make_optimizer(discriminator.parameters(), config, config.lr_discriminator),
        history=HistoryBuffer(config.history_size, image_shape, device),
        average_r=HistoricalAverage(refiner) if averaging else None,
        average_d=HistoricalAverage(discriminator) if averaging else None,
        reference=reference,
    )
    return state


def phase(config: TrainConfig, step: int) -> str:
    if step < config.pretrain_refiner_steps:
        return PRETRAIN_REFINER
    if step < config.pretrain_refiner_steps + config.pretrain_discriminator_steps:
        return PRETRAIN_DISCRIMINATOR
    return ADVERSARIAL


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    digest = hashlib.sha256(f"simgan:{seed}:{step}:{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def draw_index(size: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """n positions in a pool of `size`: distinct when the pool is large enough."""
    if size >= n:
        return torch.randperm(size, generator=generator)[:n]
    return torch.randint(size, (n,), generator=generator)


def draw(pool: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n images from the pool: distinct when the pool is large enough."""
    return pool[draw_index(len(pool), n, generator).to(pool.device)]


@contextmanager
def frozen(model: nn.Module):
    """No gradients for `model`'s parameters inside the block (D during R's update)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)


def _optimise(loss, model: nn.Module, optimiser, average: HistoricalAverage | None, config: TrainConfig):
    """One update of `model`: the historical-averaging penalty joins the loss when that
    stabiliser is on, and the running average follows the new weights. Returns the loss
    that was minimised."""
    if average is not None:
        loss = loss + config.historical_averaging * average.penalty(unwrap(model))
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    if average is not None:
        average.update(unwrap(model))
    return loss


def refiner_update(state: TrainState, config: TrainConfig, synthetic, real, generator, adversarial: bool,
                   labels: torch.Tensor | None = None) -> dict:
    index = draw_index(len(synthetic), config.batch_size, generator).to(synthetic.device)
    x = synthetic[index]
    refined, deformed, field = state.refiner(x, parts=True)
    # With a deformation, L1 keeps the appearance change small; the deformation has
    # its own penalty (an L1 against the undeformed input would forbid any movement).
    reg = losses.self_regularisation(refined, deformed, config.psi)
    loss = config.self_reg_weight * reg
    metrics = {"loss_r_reg": reg.item()}
    if field is not None:
        penalty = losses.deformation_penalty(field)
        loss = loss + config.deform_weight * penalty
        metrics["loss_r_deform"] = penalty.item()
    if adversarial and config.label_consistency_weight > 0:
        consistency = task_loss(state.task_network, refined, labels[index])
        loss = loss + config.label_consistency_weight * consistency
        metrics["loss_r_label"] = consistency.item()
    if adversarial:
        # Through the plain D: its parameters are frozen and must not join any
        # distributed gradient exchange in the refiner's update.
        with frozen(unwrap(state.discriminator)) as discriminator:
            logits, features = discriminator(refined, return_features=True, reference=state.reference)
            if config.feature_matching:
                with torch.no_grad():
                    _, real_features = discriminator(
                        draw(real, config.batch_size, generator), return_features=True, reference=state.reference
                    )
                adv = feature_matching_loss(features, real_features)
            else:
                adv = losses.refiner_adversarial_loss(logits)
            loss = loss + adv
            metrics["loss_r_adv"] = adv.item()
            metrics["r_fools_d"] = (logits.argmax(dim=1) == REAL).float().mean().item()
    loss = _optimise(loss, state.refiner, state.opt_r, state.average_r, config)
    metrics["loss_r"] = loss.item()
    return metrics


def discriminator_update(state: TrainState, config: TrainConfig, synthetic, real, generator) -> dict:
    half = config.batch_size // 2
    x = draw(synthetic, config.batch_size, generator)
    with torch.no_grad():
        current = unwrap(state.refiner)(x)
    if state.history.full:
        refined = torch.cat([current[:half], state.history.sample(half, generator)])
    else:
        refined = current
    y = draw(real, config.batch_size, generator)
    # One forward pass over refined and real together: a distributed D sees one
    # forward per backward.
    logits = state.discriminator(torch.cat([refined, y]), reference=state.reference)
    refined_logits, real_logits = logits[: len(refined)], logits[len(refined):]
    loss = losses.discriminator_loss(refined_logits, real_logits, config.label_smoothing)
    loss = _optimise(loss, state.discriminator, state.opt_d, state.average_d, config)
    state.history.add(current[:half], generator)
    with torch.no_grad():
        return {
            "loss_d": loss.item(),
            "d_acc_refined": (refined_logits.argmax(dim=1) != REAL).float().mean().item(),
            "d_acc_real": (real_logits.argmax(dim=1) == REAL).float().mean().item(),
        }


def train_step(state: TrainState, config: TrainConfig, synthetic: torch.Tensor, real: torch.Tensor, rank: int = 0,
               labels: torch.Tensor | None = None) -> dict:
    """Run step `state.step` of the schedule, advance it, return its metrics.

    `labels` (the task label of each synthetic image) is needed only by the
    label-consistency loss."""
    generator = step_generator(config.seed, state.step, rank)
    kind = phase(config, state.step)
    metrics: dict = {"step": state.step, "phase": kind}
    if kind == PRETRAIN_REFINER:
        metrics.update(refiner_update(state, config, synthetic, real, generator, adversarial=False))
    elif kind == PRETRAIN_DISCRIMINATOR:
        metrics.update(discriminator_update(state, config, synthetic, real, generator))
    else:
        for _ in range(config.k_g):
            metrics.update(refiner_update(state, config, synthetic, real, generator, adversarial=True, labels=labels))
        for _ in range(config.k_d):
            metrics.update(discriminator_update(state, config, synthetic, real, generator))
    metrics["history_count"] = state.history.count
    state.step += 1
    return metrics


def images_per_step(config: TrainConfig, step: int) -> int:
    """Synthetic images refined with gradients or for D by one step (for images/s)."""
    kind = phase(config, step)
    if kind == ADVERSARIAL:
        return config.batch_size * (config.k_g + config.k_d)
    return config.batch_size


def images_left(config: TrainConfig, step: int) -> int:
    """Images the steps from `step` to the end of the schedule will process."""
    left_pretrain = max(0, config.pretrain_refiner_steps + config.pretrain_discriminator_steps - step)
    left_adversarial = config.total_steps - step - left_pretrain
    return config.batch_size * (left_pretrain + left_adversarial * (config.k_g + config.k_d))
