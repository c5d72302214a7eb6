"""What a user sees: a short `simgan train` and a `refine-dataset` as real processes in a
non-interactive terminal print only the pipeline's own lines, each once."""

import os
import subprocess
import sys

import pytest

from helpers.refine import make_refiner, write_dataset
from helpers.train import TINY, write_folders

BIN = os.path.dirname(sys.executable)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Lines only Ray's own Python loggers and actors print. (Ray Data's refiner actor pool
# still makes Ray's C++ core log one "constructor arguments in the object store" line.)
RAY_NOISE = ("streaming_executor", "logging_progress", "PlacementGroupCleaner", "INFO worker.py",
             "Token authentication", "UserWarning", "DeprecationWarning", "TrainController",
             "Progress bars disabled")


def _run(command, cwd):
    env = {**os.environ, "PYTHONPATH": ROOT}
    for name in ("RAY_DEDUP_LOGS", "RAY_ADDRESS"):
        env.pop(name, None)  # as a user's shell has it, not as conftest sets it
    done = subprocess.run(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout[-4000:]
    return lines


def _check(lines):
    assert len(lines) <= 60, "\n".join(lines)
    repeated = sorted({line for line in lines if line.strip() and lines.count(line) > 1})
    assert not repeated, repeated
    noise = [line for line in lines if any(word in line for word in RAY_NOISE)]
    assert not noise, noise


@pytest.mark.slow
def test_train_and_refine_print_their_progress_once_and_nothing_of_ray(tmp_path):
    syn, real = write_folders(tmp_path)
    options = [f"--set={k}={v}" for k, v in {**TINY, "log_every": 2}.items() if k != "model"]
    lines = _run([os.path.join(BIN, "simgan"), "train", "--synthetic", syn, "--real", real,
                  "--out", str(tmp_path / "run"), *options], tmp_path)
    _check(lines)
    steps = [line for line in lines if "step " in line and "img/s" in line and "ETA" in line]
    assert len(steps) == 4, lines  # log_every=2 over 8 steps
    assert lines[-1].startswith("refiner written to"), lines

    write_dataset(str(tmp_path / "in"), shard_count=2, per_shard=10)
    refiner = make_refiner(str(tmp_path / "tiny.safetensors"))
    lines = _run([os.path.join(BIN, "refine-dataset"), "--in", str(tmp_path / "in"), "--out",
                  str(tmp_path / "out"), "--refiner", refiner, "--batch-size", "8"], tmp_path)
    _check(lines)
    shards = [line for line in lines if line.startswith("refine: shard ")]
    assert len(shards) == 2 and all("images/s" in line and "ETA" in line for line in shards), lines
    assert any(line.startswith("refined 20 of 20 samples") for line in lines), lines
