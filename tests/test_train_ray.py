"""The Ray Train path: real Ray, real shards through Ray Data, 2 and then 1 CPU workers.

One run is interrupted with two DDP workers and resumed with one; the resumed run must
end exactly where the local loop ends when it resumes from the same checkpoint.
"""

import json
import os
import shutil

import pytest
import torch

from pipeline import shards
from pipeline.refiner_file import load_refiner
from pipeline.training import train
from pipeline.training.checkpoint import checkpoint_path, read_checkpoint
from pipeline.training.loop import CHECKPOINT_DIR
from helpers.train import TINY, write_folders

OPTIONS = {**{k: v for k, v in TINY.items() if k != "model"}, "checkpoint_every": 3}


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


@pytest.mark.slow
def test_ray_train_two_workers_then_one_resumes_like_the_local_loop(tmp_path, ray_local):
    syn, real = write_folders(tmp_path)
    # One unusable sample: recorded with shard, key and reason, not silently dropped.
    shards.write_shard(str(tmp_path / "syn" / "syn-000001.tar"), [("broken", {"png": b"not a png", "json": b"{}"})])
    run_dir = str(tmp_path / "ray-run")

    train(syn, real, run_dir, overrides=OPTIONS, workers=2, stop_after=5)
    assert [(m["step"], m["workers"]) for m in _metrics(run_dir)] == [(s, 2) for s in range(5)]
    with open(os.path.join(run_dir, "data_problems.jsonl")) as handle:
        problems = [json.loads(line) for line in handle]
    assert [(p["shard"], p["key"], p["kind"]) for p in problems] == [("syn-000001.tar", "broken", shards.UNDECODABLE_IMAGE)]
    ray_dir = os.path.join(run_dir, "ray")
    ray_checkpoints = sorted(d for d in os.listdir(ray_dir) if os.path.isdir(os.path.join(ray_dir, d)))
    at_step_5 = os.path.join(run_dir, "ray", ray_checkpoints[-1], "checkpoint.safetensors")
    assert read_checkpoint(at_step_5)[1]["step"] == 5
    local_dir = tmp_path / "local-run"
    os.makedirs(local_dir / CHECKPOINT_DIR)
    shutil.copy(at_step_5, checkpoint_path(str(local_dir / CHECKPOINT_DIR), 5))

    path = train(syn, real, run_dir, overrides=OPTIONS, workers=1)  # the command again, one worker
    assert [(m["step"], m["workers"]) for m in _metrics(run_dir)] == [(s, 2) for s in range(5)] + [(s, 1) for s in range(5, 8)]
    for name in ("config.json", "loss_curves.png", "samples/step-00000008.png", "selection.json", "selection.png",
                 "candidates/refiner-step-000008.safetensors"):
        assert os.path.exists(os.path.join(run_dir, name)), name

    # The local loop resumed from the same checkpoint: same step function, same data
    # order, same seed, so the same final weights.
    local = train(syn, real, str(local_dir), overrides=OPTIONS, local=True)
    ray_weights, local_weights = load_refiner(path)[0].state_dict(), load_refiner(local)[0].state_dict()
    for name in local_weights:
        assert torch.allclose(ray_weights[name], local_weights[name], atol=1e-6), name
    refiner, info = load_refiner(path)
    assert (info.height, info.width, info.channels) == (12, 12, 1)
