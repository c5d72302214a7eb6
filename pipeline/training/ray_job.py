"""The training run as a Ray Train job: a TorchTrainer whose workers run the shared loop.

Shards are read and decoded by Ray Data (unusable samples come back as rows naming
shard, key and reason, recorded before training starts). Each worker streams the
decoded images into memory once and then draws its minibatches from (seed, step, rank),
so a resumed run draws what an uninterrupted one would. Checkpoints go through
`ray.train.report` into RUN_DIR/ray; re-running the same command resumes from the
latest. With more than one worker both networks are wrapped in DDP.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile

import numpy as np
import torch

from pipeline import console, ray_lines, reading, shards, storage
from pipeline.errors import UserError
from pipeline.ray_session import is_verbose, ray_session
from pipeline.training import checkpoint as ckpt
from pipeline.training.config import TrainConfig, config_from_dict
from pipeline.reading import Geometry
from pipeline.training.data import check_compatible, first_geometry, record_problems
from pipeline.training.loop import run_steps, start
from pipeline.training.outputs import RunOutputs
from pipeline.training.selection import Selector
from pipeline.training.step import images_left
from pipeline.training.task import extract_labels

RAY_DIR = "ray"
CHECKPOINT_FILE = "checkpoint.safetensors"
log = console.logger("pipeline.training")


def _rows(item: dict, geometry: Geometry) -> list[dict]:
    """Ray Data rows of one shard: usable images, and one row per problem."""
    path = item["path"]
    shard = os.path.basename(path)
    rows = []
    for found in reading.samples([path], geometry=geometry):
        if isinstance(found, shards.Problem):
            rows.append({
                "key": f"{shard}/{found.key or ''}", "shard": shard, "problem_key": found.key or "",
                "kind": found.kind, "message": found.message, "image": np.zeros(geometry.shape, np.float32),
                "labels": "",
            })
        else:
            rows.append({"key": f"{shard}/{found.key}", "shard": shard, "problem_key": "", "kind": "", "message": "",
                         "image": shards.to_float(found.image), "labels": json.dumps(found.labels)})
    return rows


def image_dataset(folder: str, role: str, run_dir: str):
    """(materialised Ray Dataset of key + image, geometry); problems recorded in the run dir."""
    import ray

    paths = shards.require_shards(folder, role)
    geometry = first_geometry(paths, role)
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=len(paths))
    ds = ds.flat_map(functools.partial(_rows, geometry=geometry), **storage.task_options(folder)).materialize()
    bad = ds.filter(lambda row: row["kind"] != "").drop_columns(["image"]).take_all()
    record_problems(run_dir, role, [shards.Problem(r["shard"], r["problem_key"] or None, r["kind"], r["message"]) for r in bad])
    good = ds.filter(lambda row: row["kind"] == "").select_columns(["key", "image", "labels"]).materialize()
    if good.count() == 0:
        raise UserError(f"the {role} folder {folder} has no usable image ({len(bad)} problems)")
    return good, geometry


def _pool(dataset_shard) -> tuple[torch.Tensor, list[str], list[dict]]:
    """All images of a dataset in one tensor, with keys and labels, ordered by key (the
    local loop's order)."""
    keys, images, labels = [], [], []
    for batch in dataset_shard.iter_batches(batch_size=4096, batch_format="numpy"):
        keys.extend(batch["key"].tolist())
        images.append(batch["image"])
        labels.extend(json.loads(text) for text in batch["labels"].tolist())
    order = np.argsort(np.asarray(keys), kind="stable")
    return (torch.from_numpy(np.concatenate(images)[order]), [keys[i] for i in order], [labels[i] for i in order])


def _worker(loop_config: dict) -> None:
    if not loop_config["verbose"]:
        # Ray Train names the logger of its "Reporting training result" line after its
        # file, not under "ray.train", so LoggingConfig's level does not reach it.
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)
    with ray_lines.to_driver(*loop_config["lines"]):
        _train(loop_config)


def _train(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    config = config_from_dict(loop_config["config"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.set_num_threads(loop_config["threads"])
    device = ray.train.torch.get_device()
    synthetic, keys, labels = _pool(ray.train.get_dataset_shard("synthetic"))
    real, _, _ = _pool(ray.train.get_dataset_shard("real"))
    task_labels = extract_labels(labels, config.label, keys) if config.label else None
    state, prepared = start(config, synthetic, real, task_labels, device, wrap=ray.train.torch.prepare_model)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            ckpt.restore(state, os.path.join(folder, CHECKPOINT_FILE), config)
        if rank == 0:
            log.info(f"resuming from step {state.step}")
    run_dir = loop_config["run_dir"]
    outputs = (
        RunOutputs(run_dir, config.total_steps, state.step, config.log_every, True, functools.partial(images_left, config))
        if rank == 0
        else None
    )

    def save(state) -> None:
        metrics = {"step": state.step}
        if rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                ckpt.save_checkpoint(os.path.join(folder, CHECKPOINT_FILE), state, config, loop_config["preset"])
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)

    if state.step >= config.total_steps:
        save(state)  # a finished run re-run: report its final checkpoint again
        return
    selector = Selector(run_dir, config, prepared.held_out, state.step) if rank == 0 else None
    run_steps(state, config, prepared.synthetic, prepared.real, save, outputs, rank,
              stop_after=loop_config["stop_after"], labels=prepared.labels, selector=selector)


def run_ray(
    config: TrainConfig,
    preset: str,
    synthetic_dir: str,
    real_dir: str,
    run_dir: str,
    workers: int = 1,
    address: str | None = None,
    stop_after: int | None = None,
) -> tuple[str, Geometry]:
    """Train with Ray Train; returns (path of the final checkpoint file, synthetic geometry)."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Ray tasks run in other working directories: every path they get must be absolute.
    run_dir, synthetic_dir, real_dir = (os.path.abspath(p) for p in (run_dir, synthetic_dir, real_dir))
    with ray_session(address) as started, ray_lines.from_workers() as lines:
        synthetic, geometry = image_dataset(synthetic_dir, "synthetic", run_dir)
        real, real_geometry = image_dataset(real_dir, "real", run_dir)
        check_compatible(geometry, real_geometry)
        resources = ray.cluster_resources()
        use_gpu = resources.get("GPU", 0) >= 1
        # On one machine the workers share its CPUs; on a cluster Ray's default applies.
        embedded = started and not (address or os.environ.get("RAY_ADDRESS"))
        cpus = max(1, int(resources.get("CPU", 1)) // workers) if embedded else 1
        trainer = TorchTrainer(
            _worker,
            train_loop_config={
                "config": config.to_dict(), "preset": preset, "run_dir": run_dir,
                "threads": cpus, "stop_after": stop_after, "lines": lines,
                "verbose": is_verbose(),
            },
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}),
            run_config=RunConfig(
                storage_path=run_dir, name=RAY_DIR, checkpoint_config=CheckpointConfig(num_to_keep=2),
                # Ray Train's own INFO lines (worker group start, checkpoint reports) only with --verbose.
                logging_config=LoggingConfig(log_level="INFO" if is_verbose() else "WARNING"),
            ),
            # Every worker gets all images (not a split) so its pool, and so its
            # minibatches, do not depend on how blocks were dealt out.
            datasets={"synthetic": synthetic, "real": real},
            dataset_config=DataConfig(datasets_to_split=[]),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise UserError(f"the Ray Train run in {run_dir} ended without a checkpoint")
        return os.path.join(result.checkpoint.path, CHECKPOINT_FILE), geometry
