"""Faults mid-run: a refiner actor's process and a write task's process are killed
(SIGKILL) while they hold a batch; Ray restarts the actor and reruns the tasks (the
retries refine/job.py configures), and the outputs are the bytes of an undisturbed run."""

import os

import pytest

import ray.cloudpickle

from pipeline.ray_watchdog import _alive
from pipeline.refine import job, refine_dataset
from helpers import faults
from helpers.faults import REFINER_PID, REFINER_STARTS, WRITER_PID, Killer, RefinerKilledOnce, writer_killed_once
from helpers.refine import make_refiner, run_outputs, write_dataset


@pytest.fixture
def stand_ins_by_value():
    """Ray's workers cannot import the tests' helpers: send the stand-ins' code along."""
    ray.cloudpickle.register_pickle_by_value(faults)
    try:
        yield
    finally:
        ray.cloudpickle.unregister_pickle_by_value(faults)


@pytest.mark.slow
def test_killed_refiner_actor_and_write_task_leave_the_same_bytes(tmp_path, ray_local, stand_ins_by_value, monkeypatch):
    in_dir = tmp_path / "in"
    write_dataset(str(in_dir), shard_count=4, per_shard=10)
    refiner = make_refiner(str(tmp_path / "tiny.safetensors"))
    calm = refine_dataset(str(in_dir), str(tmp_path / "calm"), refiner, batch_size=4)

    monkeypatch.setattr(job, "RefineStage", RefinerKilledOnce)
    monkeypatch.setattr(job, "write_shards", writer_killed_once)
    pid_files = [str(tmp_path / REFINER_PID), str(tmp_path / WRITER_PID)]
    with Killer(pid_files) as killer:
        disturbed = refine_dataset(str(in_dir), str(tmp_path / "out"), refiner, batch_size=4)

    # Both stand-ins were killed holding their first batch, and are gone.
    assert sorted(killer.killed) == sorted(pid_files)
    assert not any(_alive(pid) for pid in killer.killed.values())
    # The refiner actor came back in a new process.
    starts = (tmp_path / REFINER_STARTS).read_text().split()
    assert len(set(starts)) >= 2 and str(killer.killed[pid_files[0]]) in starts
    assert disturbed["ok"] == calm["ok"] == 40 and disturbed["shards_refined"] == 4
    assert run_outputs(tmp_path / "out") == run_outputs(tmp_path / "calm")
