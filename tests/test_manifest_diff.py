"""manifest-diff on real Parquet manifests written by the dataset and manifest modules."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import manifest, shards
from pipeline.commands.refine import manifest_diff
from pipeline.data.output import write_labelled_shard
from pipeline.refine.diff import diff_manifests


def _samples(rng, count=5):
    return [(f"k{i}", rng.integers(0, 255, (8, 8), dtype=np.uint8), {"digit": i, "pose": [i, 1.5]}) for i in range(count)]


@pytest.fixture
def base(tmp_path):
    rng = np.random.default_rng(0)
    samples = _samples(rng)
    write_labelled_shard(str(tmp_path / "a"), "x-000000.tar", samples)
    return tmp_path, samples


def test_identical_manifests_have_no_drift(base):
    root, samples = base
    write_labelled_shard(str(root / "b"), "x-000000.tar", samples)
    result = diff_manifests(str(root / "a"), str(root / "b" / "x-000000.parquet"), check_hashes=True)
    assert result.ok and result.rows_a == result.rows_b == 5
    cli = CliRunner().invoke(manifest_diff, [str(root / "a"), str(root / "b"), "--check-hashes"])
    assert cli.exit_code == 0 and "no label drift" in cli.output


def test_changed_label_is_reported_per_column(base):
    root, samples = base
    changed = [(k, img, {**labels, "digit": 9} if k == "k2" else labels) for k, img, labels in samples]
    write_labelled_shard(str(root / "b"), "x-000000.tar", changed)
    result = diff_manifests(str(root / "a"), str(root / "b"))
    assert not result.ok
    columns = {(m["key"], m["column"]) for m in result.label_mismatches}
    assert columns == {("k2", "label.digit"), ("k2", "labels_json")}
    digit = next(m for m in result.label_mismatches if m["column"] == "label.digit")
    assert (digit["a"], digit["b"]) == (2, 9)
    cli = CliRunner().invoke(manifest_diff, [str(root / "a"), str(root / "b"), "--json"])
    assert cli.exit_code == 1
    assert json.loads(cli.output)["label_mismatches"][0]["key"] == "k2"


def test_keys_on_one_side_only(base):
    root, samples = base
    write_labelled_shard(str(root / "b"), "x-000000.tar", samples[1:] + [("extra", samples[0][1], {"digit": 0})])
    result = diff_manifests(str(root / "a"), str(root / "b"))
    assert result.only_in_a == [{"shard": "x-000000.tar", "key": "k0"}]
    assert result.only_in_b == [{"shard": "x-000000.tar", "key": "extra"}]
    text = CliRunner().invoke(manifest_diff, [str(root / "a"), str(root / "b")])
    assert text.exit_code == 1 and "samples only in A: 1" in text.output and "DRIFT" in text.output


def test_status_change_is_drift(base):
    root, samples = base
    rows = manifest.read_manifest(str(root / "a")).to_dict("records")
    failed = [
        manifest.make_row(r["key"], r["shard"], status=shards.UNDECODABLE_IMAGE, error="cannot decode PNG")
        if r["key"] == "k4"
        else manifest.make_row(r["key"], r["shard"], labels=json.loads(r["labels_json"]), labels_json=r["labels_json"])
        for r in rows
    ]
    (root / "b").mkdir()
    manifest.commit_shard(str(root / "b"), "x-000000.tar", failed)
    result = diff_manifests(str(root / "a"), str(root / "b"))
    assert result.status_changes == [{"shard": "x-000000.tar", "key": "k4", "a": "ok", "b": shards.UNDECODABLE_IMAGE}]
    assert not result.ok


def test_image_hash_changes_count_only_when_asked(base):
    root, samples = base
    other = [(k, 255 - img, labels) for k, img, labels in samples]
    write_labelled_shard(str(root / "b"), "x-000000.tar", other)
    assert diff_manifests(str(root / "a"), str(root / "b")).ok
    checked = diff_manifests(str(root / "a"), str(root / "b"), check_hashes=True)
    assert not checked.ok and len(checked.hash_changes) == 5
    assert {c["column"] for c in checked.hash_changes} == {"input_sha256"}


def test_missing_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    cli = CliRunner().invoke(manifest_diff, [str(tmp_path / "empty"), str(tmp_path / "other")])
    assert cli.exit_code == 1 and "no manifests" in cli.output and "Traceback" not in cli.output
