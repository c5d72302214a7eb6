"""Verified resume: a committed shard is skipped only while its marker still describes the
input as it is and the outputs as they are; anything else is redone, with the reason."""

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from click.testing import CliRunner

from pipeline import manifest
from pipeline.commands.refine import refine
from pipeline.refine import refine_dataset
from helpers.refine import make_refiner, write_dataset

SHARDS = 3
PER_SHARD = 5
NAMES = [f"data-{i:06d}.tar" for i in range(SHARDS)]


@pytest.fixture(scope="module")
def base(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("resume")
    write_dataset(str(root / "in"), SHARDS, PER_SHARD)
    refiner = make_refiner(str(root / "tiny.safetensors"))
    out = str(root / "out")
    refine_dataset(str(root / "in"), out, refiner, batch_size=8)
    return root, refiner, out


def _copy(base, name):
    root, refiner, out = base
    shutil.copytree(root / "in", root / f"{name}-in", copy_function=shutil.copy2)
    shutil.copytree(out, root / f"{name}-out")
    return str(root / f"{name}-in"), str(root / f"{name}-out"), refiner


def _files(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder)) if n != manifest.SUMMARY}


def _tar_keys(path):
    return {s["__key__"] for s in wds.WebDataset(path, shardshuffle=False, empty_check=False)}


def _consistent(out):
    """Every manifest row marked ok names a sample that is in its output tar."""
    rows = pq.read_table(os.path.join(out, manifest.DATASET_MANIFEST)).to_pandas()
    for shard, part in rows.groupby("shard"):
        assert set(part.loc[part["status"] == "ok", "key"]) == _tar_keys(os.path.join(out, shard))
    return rows


def test_the_marker_records_input_and_outputs(base):
    root, _, out = base
    stats = json.load(open(manifest.stats_path(out, NAMES[0])))
    source = os.path.join(root / "in", NAMES[0])
    assert stats["input"] == manifest.file_record(source, mtime=True)
    assert stats["output"] == manifest.file_record(os.path.join(out, NAMES[0]))
    assert stats["manifest"] == manifest.file_record(manifest.manifest_path(out, NAMES[0]))


def test_an_untouched_rerun_skips_everything(base):
    in_dir, out, refiner = _copy(base, "same")
    before = _files(out)
    summary = refine_dataset(in_dir, out, refiner, batch_size=8)
    assert (summary["shards_refined"], summary["shards_skipped"], summary["shards_redone"]) == (0, SHARDS, {})
    assert _files(out) == before


def test_deleted_or_truncated_outputs_and_a_replaced_input_are_redone(base):
    root, _, original = base
    in_dir, out, refiner = _copy(base, "tampered")
    os.remove(os.path.join(out, NAMES[0]))
    with open(os.path.join(out, NAMES[1]), "r+b") as handle:
        handle.truncate(1024)
    # Another shard under the same name, with the same size and mtime (as `cp -p` of a
    # same-layout shard gives): only the content hash tells them apart.
    path = os.path.join(in_dir, NAMES[2])
    stat = os.stat(path)
    data = open(path, "rb").read()
    changed = data.replace(b'"source":"s2"', b'"source":"s9"')
    assert changed != data and len(changed) == len(data)
    open(path, "wb").write(changed)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    result = CliRunner().invoke(refine, ["--in", in_dir, "--out", out, "--refiner", refiner, "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    summary = json.load(open(os.path.join(out, manifest.SUMMARY)))
    assert summary["shards_redone"] == {
        NAMES[0]: "the output tar is missing",
        NAMES[1]: f"the output tar is 1024 bytes, {os.path.getsize(os.path.join(original, NAMES[1]))} when committed",
        NAMES[2]: "the input shard's content changed since it was committed (sha256 differs)",
    }
    assert (summary["shards_refined"], summary["shards_skipped"]) == (SHARDS, 0)
    assert f"redoing {NAMES[0]}: the output tar is missing" in result.output
    assert "redone 3 committed shard(s)" in result.output
    rows = _consistent(out)
    assert set(rows.loc[rows["shard"] == NAMES[2], "label.source"]) == {"s9"}
    for name in NAMES[:2]:  # same input, same refiner: the same bytes as the first run
        assert open(os.path.join(out, name), "rb").read() == open(os.path.join(original, name), "rb").read()


def test_a_tampered_manifest_or_an_old_marker_is_redone(base):
    in_dir, out, refiner = _copy(base, "manifest")
    with open(manifest.manifest_path(out, NAMES[0]), "ab") as handle:
        handle.write(b"x")
    stats_path = manifest.stats_path(out, NAMES[1])
    stats = json.load(open(stats_path))
    del stats["input"], stats["output"], stats["manifest"]
    json.dump(stats, open(stats_path, "w"))
    summary = refine_dataset(in_dir, out, refiner, batch_size=8)
    assert summary["shards_redone"][NAMES[0]].startswith("the shard manifest is")
    assert "older version" in summary["shards_redone"][NAMES[1]]
    assert summary["shards_refined"] == 2
    _consistent(out)


def test_stray_parquet_files_in_out_are_not_counted(base):
    in_dir, out, refiner = _copy(base, "stray")
    shutil.copy(manifest.manifest_path(out, NAMES[0]), os.path.join(out, "stray.parquet"))
    summary = refine_dataset(in_dir, out, refiner, batch_size=8)
    assert (summary["shards"], summary["samples"]) == (SHARDS, SHARDS * PER_SHARD)
    rows = pq.read_table(os.path.join(out, manifest.DATASET_MANIFEST)).to_pandas()
    assert len(rows) == SHARDS * PER_SHARD and sorted(set(rows["shard"])) == NAMES


def test_an_input_named_like_the_dataset_manifest_is_refused(base, tmp_path):
    root, refiner, _ = base
    in_dir = tmp_path / "in"
    shutil.copytree(root / "in", in_dir)
    os.rename(in_dir / NAMES[0], in_dir / "manifest.tar")
    out = tmp_path / "out"
    result = CliRunner().invoke(refine, ["--in", str(in_dir), "--out", str(out), "--refiner", refiner])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "manifest.tar" in result.output and "manifest.parquet" in result.output
    assert not out.exists()
