"""s3:// locations against a local S3 (moto_server): refine-dataset, resume,
validate-shards, manifest-diff and the training readers give what they give on local
folders, byte for byte, and a bad location is one line."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import manifest, storage
from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.commands.refine import refine
from pipeline.refine import refine_dataset
from pipeline.training.data import read_folder
from pipeline.training.ray_job import image_dataset
from helpers.refine import make_refiner, write_dataset
from helpers.s3 import objects, upload_folder

SHARDS = 3
PER_SHARD = 5


def _uri(bucket, prefix):
    return f"s3://{bucket}/{prefix}"


def _local(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def _comparable(files):
    """Everything a run writes that must not depend on where it ran: tars, manifests,
    and the stats markers without the input's modification time; the summary names the
    folder and the wall time."""
    same = {}
    for name, data in files.items():
        if name == manifest.SUMMARY:
            continue
        if name.endswith(manifest.STATS_SUFFIX):
            stats = json.loads(data)
            stats["input"].pop("mtime_ns")
            data = stats
        same[name] = data
    return same


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ray_local, s3):
    """One dataset refined locally and from S3 to S3 with the same refiner."""
    client, bucket = s3
    root = tmp_path_factory.mktemp("storage")
    write_dataset(str(root / "in"), SHARDS, PER_SHARD)
    refiner = make_refiner(str(root / "tiny.safetensors"))
    refine_dataset(str(root / "in"), str(root / "out"), refiner, batch_size=8)
    upload_folder(client, str(root / "in"), bucket, "runs/in")
    with open(refiner, "rb") as handle:
        client.put_object(Bucket=bucket, Key="runs/tiny.safetensors", Body=handle.read())
    summary = refine_dataset(_uri(bucket, "runs/in"), _uri(bucket, "runs/out"), _uri(bucket, "runs/tiny.safetensors"),
                             batch_size=8)
    return root, summary


def test_an_s3_run_writes_what_a_local_run_writes(runs, s3):
    client, bucket = s3
    root, summary = runs
    local, remote = _local(root / "out"), objects(client, bucket, "runs/out")
    assert sorted(remote) == sorted(local)  # no temporary or extra objects
    assert _comparable(remote) == _comparable(local)
    assert sum(name.endswith(".tar") for name in remote) == SHARDS
    assert summary["ok"] == SHARDS * PER_SHARD and summary["shards_refined"] == SHARDS


def test_resume_on_s3_redoes_only_the_shard_without_its_marker(runs, s3):
    client, bucket = s3
    root, _ = runs
    for name, data in objects(client, bucket, "runs/out").items():
        client.put_object(Bucket=bucket, Key=f"resume/{name}", Body=data)
    # As a run killed while writing shard 1 leaves it: no marker, a tar cut short.
    shard = "data-000001.tar"
    client.delete_object(Bucket=bucket, Key=f"resume/{manifest.shard_stem(shard)}{manifest.STATS_SUFFIX}")
    tar = client.get_object(Bucket=bucket, Key=f"resume/{shard}")["Body"].read()
    client.put_object(Bucket=bucket, Key=f"resume/{shard}", Body=tar[: len(tar) // 2])
    cli = CliRunner().invoke(refine, ["--in", _uri(bucket, "runs/in"), "--out", _uri(bucket, "resume"),
                                      "--refiner", _uri(bucket, "runs/tiny.safetensors"), "--batch-size", "8"])
    assert cli.exit_code == 0, cli.output
    resumed = objects(client, bucket, "resume")
    assert _comparable(resumed) == _comparable(_local(root / "out"))
    summary = json.loads(resumed[manifest.SUMMARY])
    assert (summary["shards_refined"], summary["shards_skipped"]) == (1, SHARDS - 1)


def test_validate_shards_reads_an_s3_prefix(runs, s3):
    client, bucket = s3
    clean = CliRunner().invoke(main, ["validate-shards", _uri(bucket, "runs/in")])
    assert clean.exit_code == 0, clean.output
    assert f"{SHARDS} shards, {SHARDS * PER_SHARD} samples, {SHARDS * PER_SHARD} good" in clean.output
    client.put_object(Bucket=bucket, Key="broken/d-000000.tar", Body=b"not a tar" * 100)
    broken = CliRunner().invoke(main, ["validate-shards", _uri(bucket, "broken")])
    assert broken.exit_code == 1 and "unreadable_tar" in broken.output


def test_manifest_diff_compares_s3_and_local_manifests(runs, s3, tmp_path):
    _, bucket = s3
    root, _ = runs
    same = CliRunner().invoke(main, ["manifest-diff", _uri(bucket, "runs/in"), _uri(bucket, "runs/out")])
    assert same.exit_code == 0 and "no label drift" in same.output, same.output
    mixed = CliRunner().invoke(main, ["manifest-diff", str(root / "in"), _uri(bucket, "runs/out/manifest.parquet")])
    assert mixed.exit_code == 0 and f"({SHARDS * PER_SHARD} rows)" in mixed.output, mixed.output
    write_dataset(str(tmp_path / "other"), SHARDS, PER_SHARD + 1)  # one more key per shard
    drift = CliRunner().invoke(main, ["manifest-diff", str(tmp_path / "other"), _uri(bucket, "runs/out")])
    assert drift.exit_code == 1 and "samples only in A: 3" in drift.output, drift.output


def test_training_reads_the_same_images_from_s3(runs, s3, tmp_path):
    _, bucket = s3
    root, _ = runs
    local, remote = read_folder(str(root / "in"), "synthetic"), read_folder(_uri(bucket, "runs/in"), "synthetic")
    assert remote.names == local.names and len(remote) == SHARDS * PER_SHARD
    assert np.array_equal(remote.images, local.images) and remote.labels == local.labels
    # The Ray Train job's reader: Ray Data tasks, which need the AWS variables too.
    dataset, geometry = image_dataset(_uri(bucket, "runs/in"), "synthetic", str(tmp_path))
    assert sorted(dataset.to_pandas()["key"]) == local.names and geometry == local.geometry


@pytest.mark.parametrize("flag", ["--in", "--out", "--refiner"])
def test_a_missing_bucket_is_one_line(runs, s3, flag):
    _, bucket = s3
    root, _ = runs
    args = {"--in": _uri(bucket, "runs/in"), "--out": str(root / "unused"), "--refiner": str(root / "tiny.safetensors")}
    args[flag] = "s3://no-such-bucket/data" + ("/tiny.safetensors" if flag == "--refiner" else "")
    cli = CliRunner().invoke(refine, [part for pair in args.items() for part in pair])
    assert cli.exit_code == 1 and "Traceback" not in cli.output
    lines = cli.output.strip().splitlines()
    assert len(lines) == 1 and "no-such-bucket" in lines[0], cli.output
    assert ("refiner file not found" if flag == "--refiner" else "bucket 'no-such-bucket' not found") in lines[0]


def test_a_prefix_without_shards_is_one_line(runs, s3):
    _, bucket = s3
    cli = CliRunner().invoke(main, ["validate-shards", _uri(bucket, "nothing-here")])
    assert cli.exit_code == 1 and "holds no .tar shards" in cli.output and "Traceback" not in cli.output


def test_an_unknown_scheme_is_refused(tmp_path):
    with pytest.raises(UserError, match="only local paths and s3://"):
        storage.list_files("gs://bucket/data", ".tar")


def test_a_failed_call_without_credentials_says_so(monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    error = storage.storage_error("s3://b/x", OSError("AWS Error ACCESS_DENIED during\nListObjectsV2"))
    assert str(error) == ("s3://b/x: AWS Error ACCESS_DENIED during ListObjectsV2 "
                          "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set)")
