"""Shards written by workers: the same bytes however shards are grouped, spread over
refiner actors or finished, and cross-shard duplicates decided before the run exactly
as the writer used to decide them (the first ok sample in shard-name order keeps its key)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import manifest, shards
from pipeline.refine import job, refine_dataset
from pipeline.refine.duplicates import plan_duplicates
from pipeline.refine.read import read_shard
from pipeline.refine.stage import RefineStage
from pipeline.refine.write import write_shards
from pipeline.reading import Geometry
from helpers.refine import SIZE, image, make_refiner, raw_tar, run_outputs

GEOMETRY = Geometry(SIZE, SIZE, 1, 8)


def _members(rng, *keys, bad=()):
    """Members of good samples with these keys; keys in `bad` get a cut-short PNG."""
    out = []
    for key in keys:
        png = shards.encode_png(image(rng))
        out += [(f"{key}.png", png[:40] if key in bad else png), (f"{key}.json", shards.encode_labels({"key": key}))]
    return out


def _wrong_shape(key):
    return [(f"{key}.png", shards.encode_png(np.zeros((SIZE + 1, SIZE), np.uint8))), (f"{key}.json", b"{}")]


def _dataset(folder):
    """Shards sharing keys, with the cases where the first occurrence is not the one kept."""
    rng = np.random.default_rng(0)
    raw_tar(f"{folder}/s0.tar", _members(rng, "k1", "k2", "k3", "only0", bad={"k1"}) + _wrong_shape("k5"))
    raw_tar(f"{folder}/s1.tar", _members(rng, "k6", "k1", "k2", "k4", "k5", "k6"))
    raw_tar(f"{folder}/s2.tar", _members(rng, "k1", "k2", "k3", "k5", "k6", "only2"))
    raw_tar(f"{folder}/s3.tar", _members(rng, "k4", bad={"k4"}))  # a later bad copy keeps its own status
    return str(folder)


# (shard, key) -> (status, error) of every row that is not plainly ok.
EXPECTED = {
    ("s0.tar", "k1"): (shards.UNDECODABLE_IMAGE, None),  # not ok: does not claim k1, s1 does
    ("s0.tar", "k5"): (shards.WRONG_SHAPE, None),
    ("s1.tar", "k2"): (shards.DUPLICATE_KEY, "key already used in shard s0.tar; the first occurrence was kept"),
    ("s1.tar", "k6"): (shards.DUPLICATE_KEY, "key appears more than once in this shard"),
    ("s2.tar", "k1"): (shards.DUPLICATE_KEY, "key already used in shard s1.tar; the first occurrence was kept"),
    ("s2.tar", "k2"): (shards.DUPLICATE_KEY, "key already used in shard s0.tar; the first occurrence was kept"),
    ("s2.tar", "k3"): (shards.DUPLICATE_KEY, "key already used in shard s0.tar; the first occurrence was kept"),
    ("s2.tar", "k5"): (shards.DUPLICATE_KEY, "key already used in shard s1.tar; the first occurrence was kept"),
    ("s2.tar", "k6"): (shards.DUPLICATE_KEY, "key already used in shard s1.tar; the first occurrence was kept"),
    ("s3.tar", "k4"): (shards.UNDECODABLE_IMAGE, None),
}


def _ok_keys(path, keys):
    """What the full read of the shard finds ok, as the plan's oracle."""
    columns = read_shard(path, GEOMETRY)
    return {key for key, status in zip(columns["key"], columns["status"]) if key in keys and status == manifest.OK}


def test_duplicates_are_planned_from_headers_with_the_first_ok_occurrence_kept(tmp_path):
    folder = _dataset(tmp_path)
    paths = shards.list_shards(folder)
    keys = shards.check_label_kinds(paths)
    planned = plan_duplicates(paths, [keys[p] for p in paths], {}, _ok_keys)
    assert planned == {
        "s1.tar": {"k2": "s0.tar"},
        "s2.tar": {"k1": "s1.tar", "k2": "s0.tar", "k3": "s0.tar", "k5": "s1.tar", "k6": "s1.tar"},
        # s3's k4 is not ok, so this never shows; s1's ok k4 came first.
        "s3.tar": {"k4": "s1.tar"},
    }


def test_keys_of_committed_shards_count_first(tmp_path):
    folder = _dataset(tmp_path)
    paths = [p for p in shards.list_shards(folder) if not p.endswith("s1.tar")]
    asked = []

    def ok_keys(path, keys):
        asked.append((os.path.basename(path), sorted(keys)))
        return _ok_keys(path, keys)

    keys = shards.check_label_kinds(paths)
    planned = plan_duplicates(paths, [keys[p] for p in paths], {"k2": "s1.tar", "k3": "s9.tar"}, ok_keys)
    # s0's k1 and k5 are not ok, so s2 keeps them.
    assert planned == {"s0.tar": {"k2": "s1.tar", "k3": "s9.tar"}, "s2.tar": {"k2": "s1.tar", "k3": "s9.tar"}}
    # Only undecided shared keys are read, in one read of the shard holding their first occurrence.
    assert asked == [("s0.tar", ["k1", "k5"])]


def test_header_keys_cover_every_sample_the_reader_yields(tmp_path):
    folder = _dataset(tmp_path)
    surveyed = shards.check_label_kinds(shards.list_shards(folder))  # the pass refine-dataset plans with
    for path in shards.list_shards(folder):
        read = {item.key for item in shards.iter_shard(path) if item.key is not None}
        assert read and read <= surveyed[path]


class _Recorder(RefineStage):
    """Records which rows share each forward pass."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passes = []

    def forward(self, x):
        self.passes.append(len(x))
        return super().forward(x)


def test_each_shard_is_refined_in_chunks_from_its_first_row(tmp_path):
    refiner = make_refiner(str(tmp_path / "tiny.safetensors"))
    rng = np.random.default_rng(0)
    images = np.stack([image(rng) for _ in range(9)])
    batch = {
        "image": images,
        "status": np.array([manifest.OK] * 9, dtype=object),
        "shard": np.array(["a.tar"] * 4 + ["b.tar"] * 5, dtype=object),
    }
    together = _Recorder(refiner, batch_size=3)
    out = together(batch)["image"]
    assert together.passes == [3, 1, 3, 2]  # not [3, 3, 3]: chunks never span shards
    apart = RefineStage(refiner, batch_size=3)
    for rows in (slice(0, 4), slice(4, 9)):
        single = apart({name: column[rows] for name, column in batch.items()})["image"]
        assert np.array_equal(single, out[rows])


def test_write_task_refuses_a_shard_split_between_blocks(tmp_path):
    folder = _dataset(tmp_path / "in")
    columns = read_shard(f"{folder}/s1.tar", GEOMETRY)
    half = {name: column[:3] for name, column in columns.items()}
    with pytest.raises(RuntimeError, match="s1.tar reached a write task incomplete"):
        write_shards(half, str(tmp_path), "hash", {})
    assert not os.path.exists(tmp_path / "s1.tar")


def _run(monkeypatch, folder, out, refiner, actors, grouping, stages=job.SPLIT):
    """One run with `actors` refiner actors (or fused workers) and shards read in the
    groups `grouping` makes. Two actors on 0.4 CPU each leave room for the tasks on 2
    CPUs; 0.4, not the tasks' 0.5, so Ray does not fuse reading into the actors, as in
    a real plan."""
    plan = {"stages": stages, "device": "cpu", "actors": actors, "num_gpus": 0, "num_cpus": 0.4, "threads": 1}
    monkeypatch.setattr(job, "plan_resources", lambda cluster, device, stages: plan)
    monkeypatch.setattr(job, "group_shards", lambda paths, target, size_of=None: grouping(paths))
    return refine_dataset(folder, str(out), refiner, batch_size=2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("workers")
    folder = _dataset(root / "in")
    refiner = make_refiner(str(root / "tiny.safetensors"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        one = _run(monkeypatch, folder, root / "one", refiner, 1, lambda paths: [paths])
        two = _run(monkeypatch, folder, root / "two", refiner, 2, lambda paths: [[p] for p in reversed(paths)])
        fused = _run(monkeypatch, folder, root / "fused", refiner, 2, lambda paths: [paths[1:], paths[:1]], job.FUSED)
    return root, folder, refiner, one, two, fused


def _same_run(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if "time" not in k and "per_s" not in k and k != "out_dir"} == {
        k: v for k, v in b.items() if "time" not in k and "per_s" not in k and k != "out_dir"
    }


def test_outputs_do_not_depend_on_actors_grouping_finishing_order_or_stages(runs):
    root, _, _, one, two, fused = runs
    assert run_outputs(root / "one") == run_outputs(root / "two") == run_outputs(root / "fused")
    assert _same_run(one, two) and _same_run(one, fused)


def test_cross_shard_duplicates_are_recorded_as_before(runs):
    root, _, _, one, _, _ = runs
    rows = pq.read_table(root / "one" / manifest.DATASET_MANIFEST).to_pandas()
    found = {}
    for row in rows.itertuples():
        if row.status != manifest.OK and (row.shard, row.key) in EXPECTED and (row.shard, row.key) not in found:
            found[(row.shard, row.key)] = (row.status, row.error if row.status == shards.DUPLICATE_KEY else None)
    assert found == EXPECTED
    assert (rows["status"] != manifest.OK).sum() == len(EXPECTED)
    kept = {}
    for path in shards.list_shards(str(root / "one")):
        for sample in shards.iter_shard(path):
            if isinstance(sample, shards.RawSample):  # an empty output tar reads as a Problem
                kept.setdefault(sample.key, []).append(os.path.basename(path))
    assert kept == {"k1": ["s1.tar"], "k2": ["s0.tar"], "k3": ["s0.tar"], "k4": ["s1.tar"], "k5": ["s1.tar"],
                    "k6": ["s1.tar"], "only0": ["s0.tar"], "only2": ["s2.tar"]}


def test_resume_keeps_duplicate_decisions(runs, monkeypatch):
    root, folder, refiner, _, _, _ = runs
    resumed = root / "resumed"
    shutil.copytree(root / "one", resumed)
    os.remove(manifest.stats_path(str(resumed), "s0.tar"))  # s0 redone; s1 and s2 committed
    # Resumed by the fused path: a split run's committed keys count first there too.
    summary = _run(monkeypatch, folder, resumed, refiner, 2, lambda paths: [paths], job.FUSED)
    assert summary["shards_refined"] == 1
    assert run_outputs(resumed) == run_outputs(root / "one")


# A Ray that declares one GPU (Ray takes the count on trust), the GPU plan made for it,
# and its refiner actor refining on the CPU: the plan's Ray Data wiring, checked where
# there is no GPU.
_GPU_PLAN_RUN = """
import sys
import ray
from pipeline.refine import job

ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
plan = job.plan_resources(ray.cluster_resources(), None)
assert plan["num_gpus"] == 1 and plan["device"] == "cuda", plan
job.plan_resources = lambda cluster, device, stages=None: {**plan, "device": "cpu"}
summary = job.refine_dataset(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=2)
print("ok", summary["ok"])
"""


def test_the_gpu_plan_runs_through_ray_data_and_writes_the_same_bytes(runs):
    root, folder, refiner, one, _, _ = runs
    done = subprocess.run([sys.executable, "-c", _GPU_PLAN_RUN, folder, str(root / "gpu-plan"), refiner],
                          capture_output=True, text=True, timeout=300, cwd=os.getcwd())
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"ok {one['ok']}" in done.stdout
    assert run_outputs(root / "gpu-plan") == run_outputs(root / "one")
