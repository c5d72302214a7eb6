"""The training job: config, data, the local or Ray Train run, then the refiner export."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from pipeline.devices import pick_device
from pipeline.errors import UserError
from pipeline.models import Refiner, refiner_preset
from pipeline.refiner_file import save_refiner
from pipeline.training import checkpoint as ckpt
from pipeline.training.config import TrainConfig, make_config, save_config
from pipeline.training.collapse import refiner_check, write_check
from pipeline.training.data import (PROBLEMS_FILE, Geometry, check_compatible, first_images, read_folder,
                                    record_problems)
from pipeline.training.loop import run_local
from pipeline.training.outputs import plot_loss_curves

REFINER_FILE = "refiner.safetensors"
CHECK_IMAGES = 512  # synthetic images the collapse check refines


def export_refiner(checkpoint_file: str, run_dir: str, config: TrainConfig, geometry: Geometry,
                   synthetic_sample: np.ndarray) -> str:
    """RUN_DIR/refiner.safetensors from a checkpoint's refiner weights, and its collapse check
    (RUN_DIR/refiner_check.json; a loud warning when the refiner collapsed)."""
    tensors, _ = ckpt.read_checkpoint(checkpoint_file)
    refiner = Refiner(refiner_preset(config.model, geometry.channels))
    refiner.load_state_dict({k[len("refiner."):]: v for k, v in tensors.items() if k.startswith("refiner.")})
    path = os.path.join(run_dir, REFINER_FILE)
    save_refiner(path, refiner, config.model, geometry.height, geometry.width, geometry.bit_depth)
    warning = write_check(run_dir, refiner_check(refiner, synthetic_sample))
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return path


def train(
    synthetic_dir: str,
    real_dir: str,
    run_dir: str,
    preset: str = "digits",
    config_file: str | None = None,
    overrides: dict | None = None,
    workers: int = 1,
    address: str | None = None,
    local: bool = False,
    stop_after: int | None = None,
) -> str:
    """Train a refiner; returns the path of RUN_DIR/refiner.safetensors.

    Runs as a Ray Train job (embedded local Ray unless `address` names a cluster), or
    with `local=True` as a plain loop in this process. Re-running with the same
    arguments resumes from the last checkpoint. `stop_after` ends the run after that
    many more steps (as if it were killed there).
    """
    config = make_config(preset, config_file, overrides)
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if local and (workers != 1 or address):
        raise UserError("--local trains in this process: it cannot be combined with --workers or --address")
    os.makedirs(run_dir, exist_ok=True)
    save_config(run_dir, config, preset)
    problems_file = os.path.join(run_dir, PROBLEMS_FILE)
    if os.path.exists(problems_file):
        os.remove(problems_file)  # rewritten from this run's reading of the data
    if local:
        synthetic = read_folder(synthetic_dir, "synthetic")
        real = read_folder(real_dir, "real")
        check_compatible(synthetic.geometry, real.geometry)
        record_problems(run_dir, "synthetic", synthetic.problems)
        record_problems(run_dir, "real", real.problems)
        last = run_local(
            config, preset, torch.from_numpy(synthetic.images), torch.from_numpy(real.images),
            run_dir, pick_device(), stop_after=stop_after,
        )
        geometry = synthetic.geometry
        sample = synthetic.images[:CHECK_IMAGES]
    else:
        from pipeline.training.ray_job import run_ray

        last, geometry = run_ray(config, preset, synthetic_dir, real_dir, run_dir, workers, address, stop_after)
        sample = first_images(synthetic_dir, "synthetic", CHECK_IMAGES, geometry)
    plot_loss_curves(run_dir)
    return export_refiner(last, run_dir, config, geometry, sample)
