"""Faults mid-run: a refiner actor's process and a write task's process (split stages),
or a fused worker's process, are killed (SIGKILL) while they hold a batch; Ray restarts
the actor and reruns the tasks (the retries refine/job.py configures), and the outputs
are the bytes of an undisturbed run."""

import os

import pytest

import ray.cloudpickle

from pipeline.refine import job, refine_dataset
from helpers import faults
from helpers.processes import alive
from helpers.faults import (REFINER_PID, REFINER_STARTS, WRITER_PID, Killer, RefinerKilledOnce, WorkerKilledOnce,
                            writer_killed_once)
from helpers.refine import make_refiner, run_outputs, write_dataset


@pytest.fixture
def stand_ins_by_value():
    """Ray's workers cannot import the tests' helpers: send the stand-ins' code along."""
    ray.cloudpickle.register_pickle_by_value(faults)
    try:
        yield
    finally:
        ray.cloudpickle.unregister_pickle_by_value(faults)


@pytest.fixture(scope="module")
def calm(tmp_path_factory, ray_local):
    """An undisturbed run (default stages: fused on CPU) to compare against."""
    root = tmp_path_factory.mktemp("calm")
    write_dataset(str(root / "in"), shard_count=4, per_shard=10)
    summary = refine_dataset(str(root / "in"), str(root / "out"), make_refiner(str(root / "tiny.safetensors")), batch_size=4)
    return root, summary


def _refiner_came_back(tmp_path, killer, pid_file) -> None:
    starts = (tmp_path / REFINER_STARTS).read_text().split()
    assert len(set(starts)) >= 2 and str(killer.killed[pid_file]) in starts


@pytest.mark.slow
def test_killed_refiner_actor_and_write_task_leave_the_same_bytes(tmp_path, calm, stand_ins_by_value, monkeypatch):
    root, calm_summary = calm
    refiner = make_refiner(str(tmp_path / "tiny.safetensors"))
    monkeypatch.setattr(job, "RefineStage", RefinerKilledOnce)
    monkeypatch.setattr(job, "write_shards", writer_killed_once)
    pid_files = [str(tmp_path / REFINER_PID), str(tmp_path / WRITER_PID)]
    with Killer(pid_files) as killer:
        disturbed = refine_dataset(str(root / "in"), str(tmp_path / "out"), refiner, batch_size=4, stages=job.SPLIT)

    # Both stand-ins were killed holding their first batch, and are gone.
    assert sorted(killer.killed) == sorted(pid_files)
    assert not any(alive(pid) for pid in killer.killed.values())
    _refiner_came_back(tmp_path, killer, pid_files[0])  # in a new process
    assert disturbed["ok"] == calm_summary["ok"] == 40 and disturbed["shards_refined"] == 4
    assert run_outputs(tmp_path / "out") == run_outputs(root / "out")


@pytest.mark.slow
def test_killed_fused_worker_leaves_the_same_bytes(tmp_path, calm, stand_ins_by_value, monkeypatch):
    root, calm_summary = calm
    refiner = make_refiner(str(tmp_path / "tiny.safetensors"))
    monkeypatch.setattr(job, "ShardWorker", WorkerKilledOnce)
    pid_file = str(tmp_path / REFINER_PID)
    with Killer([pid_file]) as killer:
        disturbed = refine_dataset(str(root / "in"), str(tmp_path / "out"), refiner, batch_size=4)

    assert list(killer.killed) == [pid_file] and not alive(killer.killed[pid_file])
    _refiner_came_back(tmp_path, killer, pid_file)
    assert disturbed["ok"] == calm_summary["ok"] == 40 and disturbed["shards_refined"] == 4
    assert run_outputs(tmp_path / "out") == run_outputs(root / "out")
