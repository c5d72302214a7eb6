"""The training loop around the one train step, shared by the local run and each Ray
Train worker; and the plain local run itself."""

from __future__ import annotations

import functools
import os
from typing import Callable

import torch

from pipeline import console
from pipeline.training import checkpoint as ckpt
from pipeline.training.config import TrainConfig
from pipeline.training.outputs import RunOutputs, write_grid
from pipeline.training.selection import Prepared, Selector, prepare
from pipeline.training.step import TrainState, build_state, images_left, images_per_step, train_step, unwrap
from pipeline.training.task import Labels
from pipeline.training.tone import DESCRIPTIONS, fit_input_changes, label_floor

CHECKPOINT_DIR = "checkpoints"


def run_steps(
    state: TrainState,
    config: TrainConfig,
    synthetic: torch.Tensor,
    real: torch.Tensor,
    save: Callable[[TrainState], None],
    outputs: RunOutputs | None = None,
    rank: int = 0,
    stop_after: int | None = None,
    labels: torch.Tensor | None = None,
    selector: Selector | None = None,
) -> TrainState:
    """Train from `state.step` to the end of the schedule (or `stop_after` more steps).

    `save` is called after every checkpoint_every-th step and after the last one, on
    every rank alike; `outputs` and `selector` (rank 0 only) get metrics, sample grids
    and the scored candidates.
    """
    end = config.total_steps if stop_after is None else min(config.total_steps, state.step + stop_after)
    unwrap(state.refiner).train()
    unwrap(state.discriminator).train()
    if outputs is not None and state.step == 0:
        write_grid(outputs.run_dir, 0, unwrap(state.refiner), synthetic, real)
    while state.step < end:
        images = images_per_step(config, state.step)
        metrics = train_step(state, config, synthetic, real, rank, labels)
        if selector is not None and selector.due(state.step):
            scored = selector.score(state.refiner, state.step)
            metrics.update({f"candidate_{k}": v for k, v in scored.items() if isinstance(v, (int, float)) and k != "step"})
        if outputs is not None:
            metrics["workers"] = _world_size()
            outputs.record(metrics, images * metrics["workers"])
            if state.step % config.sample_every == 0 or state.step == config.total_steps:
                write_grid(outputs.run_dir, state.step, unwrap(state.refiner), synthetic, real)
        if state.step % config.checkpoint_every == 0 or state.step == end:
            save(state)
    return state


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def start(config: TrainConfig, synthetic: torch.Tensor, real: torch.Tensor, labels: Labels | None,
          device, wrap=lambda model: model) -> tuple[TrainState, Prepared]:
    """The held-out split, the task network and a fresh state: the same on every worker."""
    prepared = prepare(config, synthetic.to(device), real.to(device), labels)
    fitted, kept = fit_input_changes(config, prepared.synthetic, prepared.real, prepared.held_out.network,
                                     prepared.held_out.synthetic)
    for name, fraction in kept.items():
        if _rank() == 0:
            console.logger("pipeline.training").info(
                f"{DESCRIPTIONS[name]} scaled to {fraction:.0%} of the fitted change: with all of it the task network "
                f"read the held-out synthetic images differently (below {label_floor(config):.2f} label consistency)")
    state = build_state(config, tuple(synthetic.shape[1:]), prepared.real, device, wrap, fitted)
    if config.label_consistency_weight > 0:
        state.task_network = prepared.loss_network
    return state, prepared


def run_local(
    config: TrainConfig,
    preset: str,
    synthetic: torch.Tensor,
    real: torch.Tensor,
    run_dir: str,
    device: torch.device | str = "cpu",
    stop_after: int | None = None,
    echo: bool = True,
    labels: Labels | None = None,
) -> str:
    """Train in this process, resuming from RUN_DIR/checkpoints; returns the last checkpoint."""
    folder = os.path.join(run_dir, CHECKPOINT_DIR)
    state, prepared = start(config, synthetic, real, labels, device)
    latest = ckpt.latest_checkpoint(folder)
    if latest:
        ckpt.restore(state, latest, config)
        if echo:
            console.logger("pipeline.training").info(f"resuming from {latest} (step {state.step})")
    if state.step >= config.total_steps:
        return latest
    outputs = RunOutputs(
        run_dir, config.total_steps, state.step, config.log_every, echo, functools.partial(images_left, config)
    )

    def save(state: TrainState) -> None:
        ckpt.save_checkpoint(ckpt.checkpoint_path(folder, state.step), state, config, preset)
        ckpt.prune(folder)

    selector = Selector(run_dir, config, prepared.held_out, state.step, echo)
    run_steps(state, config, prepared.synthetic, prepared.real, save, outputs, stop_after=stop_after,
              labels=prepared.labels, selector=selector)
    return ckpt.latest_checkpoint(folder)
