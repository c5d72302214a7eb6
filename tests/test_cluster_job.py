"""A real Ray cluster on loopback: `refine-dataset` submitted through the Ray Jobs API,
first to a lone head, then with a second node joined; both nodes do work, and the two
runs write the same bytes."""

import os
import sys

import pytest

from pipeline import manifest, shards
from pipeline.data.simulate import simulate
from pipeline.refine.diff import diff_manifests
from helpers.cluster import LoopbackCluster, stats_nodes
from helpers.refine import make_refiner, run_outputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARDS, PER_SHARD = 6, 128


@pytest.fixture
def cluster(tmp_path):
    cluster = LoopbackCluster(str(tmp_path))
    try:
        yield cluster
    finally:
        cluster.stop()


def _refine_job(cluster, in_dir, out_dir, refiner) -> str:
    return cluster.run_job(
        f"{sys.executable} jobs/refine.py --in {in_dir} --out {out_dir} --refiner {refiner} --batch-size 4", ROOT
    )


@pytest.mark.slow
def test_refine_job_on_one_node_then_two_writes_the_same_bytes(tmp_path, cluster):
    in_dir = str(tmp_path / "in")
    simulate("digits", SHARDS * PER_SHARD, in_dir, seed=0, workers=1, per_shard=PER_SHARD)
    # Slow enough (about 0.5 s a shard on one thread) that shards wait for a worker:
    # Ray Data gives each block to the least busy actor, so a refiner that is faster
    # than the hand-out leaves every shard to the same one.
    refiner = make_refiner(str(tmp_path / "refiner.safetensors"), size=28, features=64, blocks=4)
    # Two CPUs per node, no GPU: the fused plan runs one worker (read, refine, write)
    # per CPU, two on one node, four on two, at least one on each node.
    cluster.start_head(num_cpus=2)

    one = str(tmp_path / "one-node")
    logs = _refine_job(cluster, in_dir, one, refiner)
    assert f"refined {SHARDS * PER_SHARD} of {SHARDS * PER_SHARD} samples" in logs
    [head] = cluster.node_ids()
    assert set(stats_nodes(one, "refined").values()) == set(stats_nodes(one, "written").values()) == {head}

    cluster.add_node(num_cpus=2)
    head_, second = cluster.node_ids()
    assert head_ == head
    two = str(tmp_path / "two-nodes")
    _refine_job(cluster, in_dir, two, refiner)

    refined, written = stats_nodes(two, "refined"), stats_nodes(two, "written")
    assert len(refined) == len(written) == SHARDS
    assert set(refined.values()) == {head, second}, refined
    assert set(written.values()) <= {head, second}
    # Tars and manifests byte for byte; stats files but for the nodes that did the work.
    assert run_outputs(two) == run_outputs(one)
    assert len(shards.list_shards(two)) == SHARDS
    rows = manifest.read_manifest(two)
    assert len(rows) == SHARDS * PER_SHARD and (rows["status"] == "ok").all()
    assert diff_manifests(in_dir, two, check_hashes=True).ok
