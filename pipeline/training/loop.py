"""The training loop around the one train step, shared by the local run and each Ray
Train worker; and the plain local run itself."""

from __future__ import annotations

import functools
import os
from typing import Callable

import torch

from pipeline.training import checkpoint as ckpt
from pipeline.training.config import TrainConfig
from pipeline.training.outputs import RunOutputs, write_grid
from pipeline.training.step import TrainState, build_state, images_left, images_per_step, train_step, unwrap

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
) -> TrainState:
    """Train from `state.step` to the end of the schedule (or `stop_after` more steps).

    `save` is called after every checkpoint_every-th step and after the last one, on
    every rank alike; `outputs` (rank 0 only) gets metrics and sample grids.
    """
    end = config.total_steps if stop_after is None else min(config.total_steps, state.step + stop_after)
    unwrap(state.refiner).train()
    unwrap(state.discriminator).train()
    if outputs is not None and state.step == 0:
        write_grid(outputs.run_dir, 0, unwrap(state.refiner), synthetic, real)
    while state.step < end:
        images = images_per_step(config, state.step)
        metrics = train_step(state, config, synthetic, real, rank)
        if outputs is not None:
            metrics["workers"] = _world_size()
            outputs.record(metrics, images * metrics["workers"])
            if state.step % config.sample_every == 0 or state.step == config.total_steps:
                write_grid(outputs.run_dir, state.step, unwrap(state.refiner), synthetic, real)
        if state.step % config.checkpoint_every == 0 or state.step == end:
            save(state)
    return state


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def run_local(
    config: TrainConfig,
    preset: str,
    synthetic: torch.Tensor,
    real: torch.Tensor,
    run_dir: str,
    device: torch.device | str = "cpu",
    stop_after: int | None = None,
    echo: bool = True,
) -> str:
    """Train in this process, resuming from RUN_DIR/checkpoints; returns the last checkpoint."""
    folder = os.path.join(run_dir, CHECKPOINT_DIR)
    synthetic, real = synthetic.to(device), real.to(device)
    state = build_state(config, tuple(synthetic.shape[1:]), real, device)
    latest = ckpt.latest_checkpoint(folder)
    if latest:
        ckpt.restore(state, latest, config)
        if echo:
            print(f"resuming from {latest} (step {state.step})", flush=True)
    if state.step >= config.total_steps:
        return latest
    outputs = RunOutputs(
        run_dir, config.total_steps, state.step, config.log_every, echo, functools.partial(images_left, config)
    )

    def save(state: TrainState) -> None:
        ckpt.save_checkpoint(ckpt.checkpoint_path(folder, state.step), state, config, preset)
        ckpt.prune(folder)

    run_steps(state, config, synthetic, real, save, outputs, stop_after=stop_after)
    return ckpt.latest_checkpoint(folder)
