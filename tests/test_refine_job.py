"""refine-dataset end to end on a local 2-CPU Ray: outputs, determinism, resume, refusals."""

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest
import ray
import webdataset as wds
from click.testing import CliRunner

from pipeline import manifest, shards
from pipeline.commands.refine import manifest_diff, refine
from pipeline.refine import refine_dataset
from pipeline.refiner_file import read_refiner_info
from helpers.refine import make_refiner, write_dataset

SHARDS = 3
PER_SHARD = 20


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("refine")
    write_dataset(str(root / "in"), SHARDS, PER_SHARD)
    refiner = make_refiner(str(root / "tiny.safetensors"))
    return root, str(root / "in"), refiner


@pytest.fixture(scope="module")
def first_run(data, ray_local):
    root, in_dir, refiner = data
    out = str(root / "out1")
    summary = refine_dataset(in_dir, out, refiner, batch_size=16)
    return out, summary


def _files(folder):
    """Bytes of every output file except the run's summary (it holds wall times)."""
    return {
        name: open(os.path.join(folder, name), "rb").read()
        for name in sorted(os.listdir(folder))
        if name != manifest.SUMMARY
    }


def test_refined_shards_keep_every_sample_label_and_geometry(data, first_run):
    root, in_dir, refiner = data
    out, summary = first_run
    assert summary["samples"] == summary["ok"] == SHARDS * PER_SHARD
    assert summary["by_status"] == {"ok": SHARDS * PER_SHARD}
    assert [os.path.basename(p) for p in shards.list_shards(out)] == [os.path.basename(p) for p in shards.list_shards(in_dir)]
    info = read_refiner_info(refiner)
    for name in sorted(n for n in os.listdir(in_dir) if n.endswith(".tar")):
        inputs = {s["__key__"]: s for s in wds.WebDataset(os.path.join(in_dir, name), shardshuffle=False)}
        outputs = {s["__key__"]: s for s in wds.WebDataset(os.path.join(out, name), shardshuffle=False)}
        assert outputs.keys() == inputs.keys()
        changed = 0
        for key, sample in outputs.items():
            assert sample["json"] == inputs[key]["json"]  # label bytes copied unchanged
            before, after = shards.decode_png(inputs[key]["png"]), shards.decode_png(sample["png"])
            assert after.shape == before.shape and after.dtype == before.dtype
            changed += int((after != before).any())
        assert changed == len(outputs)
        rows = pq.read_table(manifest.manifest_path(out, name)).to_pandas()
        assert list(rows["key"]) == list(inputs)
        assert set(rows["refiner_hash"]) == {info.content_hash}
        assert (rows["status"] == "ok").all()
        assert rows["output_sha256"].notna().all()
        stats = json.load(open(manifest.stats_path(out, name)))
        assert stats["ok"] == PER_SHARD and stats["refiner_hash"] == info.content_hash


def test_ray_data_reads_the_refined_shards(first_run):
    out, _ = first_run
    rows = ray.data.read_webdataset(shards.list_shards(out), decoder=None).take_all()
    assert len(rows) == SHARDS * PER_SHARD
    assert all(json.loads(r["json"])["source"] == r["__key__"].split("_")[0] for r in rows)


def test_manifest_diff_shows_no_label_drift(data, first_run):
    _, in_dir, _ = data
    out, _ = first_run
    result = CliRunner().invoke(manifest_diff, [in_dir, out, "--check-hashes"])
    assert result.exit_code == 0, result.output
    assert "no label drift" in result.output


def test_overwrite_redoes_everything_byte_identically(data, first_run):
    # Same inputs + same refiner = the same bytes, in every shard and manifest.
    root, in_dir, refiner = data
    out, _ = first_run
    again = str(root / "again")
    shutil.copytree(out, again)
    name = "data-000002.tar"
    with open(os.path.join(again, name), "wb") as handle:
        handle.write(b"damaged after commit")
    summary = refine_dataset(in_dir, again, refiner, batch_size=16, overwrite=True)
    assert summary["shards_refined"] == SHARDS and summary["shards_skipped"] == 0
    assert _files(again).keys() == _files(out).keys()
    for filename, content in _files(out).items():
        assert _files(again)[filename] == content, filename


def test_resume_redoes_only_uncommitted_shards(data, first_run):
    root, in_dir, refiner = data
    out, _ = first_run
    resumed = str(root / "resumed")
    shutil.copytree(out, resumed)
    # A run killed mid-shard: the marker is missing and the tar is cut short.
    name = "data-000001.tar"
    os.remove(manifest.stats_path(resumed, name))
    with open(os.path.join(resumed, name), "r+b") as handle:
        handle.truncate(700)
    summary = refine_dataset(in_dir, resumed, refiner, batch_size=16)
    assert summary["shards_refined"] == 1 and summary["shards_skipped"] == SHARDS - 1
    assert summary["ok"] == SHARDS * PER_SHARD
    for filename, content in _files(out).items():
        assert _files(resumed)[filename] == content, filename

    rerun = refine_dataset(in_dir, resumed, refiner, batch_size=16)
    assert rerun["shards_refined"] == 0 and rerun["shards_skipped"] == SHARDS
    assert rerun["ok"] == SHARDS * PER_SHARD


def test_resume_refuses_output_of_another_refiner(data, first_run):
    root, in_dir, _ = data
    out, _ = first_run
    other = make_refiner(str(root / "other.safetensors"), seed=1)
    result = CliRunner().invoke(refine, ["--in", in_dir, "--out", out, "--refiner", other])
    assert result.exit_code != 0
    assert "another refiner" in result.output and "--overwrite" in result.output


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda root: str(root / "missing.safetensors"), "not found"),
        (lambda root: _write(root / "junk.safetensors", b"not a refiner at all"), "is not a refiner"),
        (lambda root: make_refiner(str(root / "rgb.safetensors"), channels=3), "8x8x3 8-bit"),
        (lambda root: make_refiner(str(root / "big.safetensors"), size=16), "16x16"),
        (lambda root: make_refiner(str(root / "deep.safetensors"), bit_depth=16), "16-bit"),
    ],
    ids=["no-file", "not-a-refiner", "channels", "size", "bit-depth"],
)
def test_refuses_unusable_refiner_before_any_work(data, tmp_path, make, message):
    _, in_dir, _ = data
    out = tmp_path / "out"
    result = CliRunner().invoke(refine, ["--in", in_dir, "--out", str(out), "--refiner", make(tmp_path)])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def _write(path, data):
    path.write_bytes(data)
    return str(path)


def test_resource_plan_by_device_and_stages():
    from pipeline.errors import UserError
    from pipeline.refine.job import FUSED, LIGHT_TASK_CPUS, SPLIT, plan_resources

    # CPU, by default: one single-threaded fused worker per CPU; nothing else needs a CPU.
    small = plan_resources({"CPU": 2.0}, None)
    assert (small["stages"], small["device"], small["actors"], small["num_cpus"], small["threads"]) == (FUSED, "cpu", 2, 1, 1)
    # CPU, split: the refiner actors leave room for the read and write tasks.
    split = plan_resources({"CPU": 2.0}, None, SPLIT)
    assert (split["stages"], split["device"], split["actors"], split["num_cpus"]) == (SPLIT, "cpu", 1, 1)
    assert 2 - split["actors"] * split["num_cpus"] >= 2 * LIGHT_TASK_CPUS  # a read and an encode task fit
    big = plan_resources({"CPU": 16.0}, None, SPLIT)
    assert big["actors"] == 12 and big["threads"] == 1
    # GPU: always split, so decoding and encoding never run on the GPU actor's CPU.
    gpu = plan_resources({"CPU": 8.0, "GPU": 2.0}, None)
    assert (gpu["stages"], gpu["device"], gpu["actors"], gpu["num_gpus"]) == (SPLIT, "cuda", 2, 1)
    assert plan_resources({"CPU": 8.0, "GPU": 2.0}, "cpu")["stages"] == FUSED
    with pytest.raises(UserError, match="--device cpu"):
        plan_resources({"CPU": 8.0, "GPU": 2.0}, None, FUSED)
    with pytest.raises(UserError, match="fused or split"):
        plan_resources({"CPU": 2.0}, None, "both")
    with pytest.raises(UserError, match="no GPU"):
        plan_resources({"CPU": 2.0}, "cuda")
