"""Dataset-wide conditions stop refine-dataset before it writes anything (exit 2, one
line, no traceback), and validate-shards refuses the same folders the same way."""

import os
import time

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from helpers.tars import good, png, tar_bytes, write
from pipeline import manifest, shards
from pipeline.cli import main
from pipeline.commands.refine import refine
from helpers.refine import make_refiner


def _shard(folder, name, labels):
    members = []
    for key, value in labels.items():
        members += [(f"{key}.png", png()), (f"{key}.json", shards.encode_labels(value))]
    return write(os.path.join(folder, name), tar_bytes(members))


@pytest.fixture(scope="module")
def refiner(tmp_path_factory):
    return make_refiner(str(tmp_path_factory.mktemp("refiner") / "tiny.safetensors"))


def _refused(folder, out, refiner):
    """Both commands on `folder`: exit 2 and the same single line."""
    result = CliRunner().invoke(refine, ["--in", str(folder), "--out", str(out), "--refiner", refiner])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not os.path.exists(out)
    check = CliRunner().invoke(main, ["validate-shards", str(folder)])
    assert check.exit_code == 2 and len(check.output.strip().splitlines()) == 1
    return result.output, check.output


def test_a_label_that_is_an_integer_in_one_shard_and_a_string_in_another(tmp_path, refiner):
    _shard(tmp_path / "in", "a.tar", {"a1": {"digit": 1}, "a2": {"digit": 2}})
    _shard(tmp_path / "in", "b.tar", {"b1": {"digit": 3}, "b2": {"digit": "four"}})
    refused, checked = _refused(tmp_path / "in", tmp_path / "out", refiner)
    for text in (refused, checked):
        assert "label 'digit' is integer in a.tar (key 'a1') but string in b.tar (key 'b2')" in text


@pytest.mark.parametrize(
    "first, second, kinds",
    [(True, 1, "boolean .* but integer"), ([1, 2], "1,2", "array .* but string"), ({"x": 1}, 1.5, "object .* but float")],
)
def test_every_kind_clash_is_refused(tmp_path, first, second, kinds):
    _shard(tmp_path, "a.tar", {"a": {"v": first}})
    _shard(tmp_path, "b.tar", {"b": {"v": second}})
    with pytest.raises(shards.BadDataset, match=kinds):
        shards.check_label_kinds(shards.list_shards(str(tmp_path)))


def test_undecodable_labels_are_left_to_the_per_sample_report(tmp_path):
    _shard(tmp_path, "a.tar", {"a": {"v": 1}})
    write(tmp_path / "b.tar", tar_bytes(good("b") + [("c.png", png()), ("c.json", b'{"v":"x","v":"y"}')]))
    shards.check_label_kinds(shards.list_shards(str(tmp_path)))


def test_integers_and_floats_share_a_float_column(tmp_path, refiner, ray_local):
    _shard(tmp_path / "in", "a.tar", {"a1": {"scale": 1}})
    _shard(tmp_path / "in", "b.tar", {"b1": {"scale": 1.5}})
    result = CliRunner().invoke(refine, ["--in", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--refiner", refiner])
    assert result.exit_code == 0, result.output
    rows = pq.read_table(tmp_path / "out" / manifest.DATASET_MANIFEST).to_pandas()
    assert list(rows["label.scale"]) == [1.0, 1.5]


@pytest.mark.timeout(60)
def test_a_fifo_in_the_input_stops_the_job_before_it_writes(tmp_path, refiner):
    _shard(tmp_path / "in", "a.tar", {"a1": {"digit": 1}})
    os.mkfifo(tmp_path / "in" / "x.tar")
    start = time.perf_counter()
    refused, checked = _refused(tmp_path / "in", tmp_path / "out", refiner)
    assert "x.tar is a FIFO (named pipe), not a regular file" in refused and "x.tar" in checked
    assert time.perf_counter() - start < 30


def test_a_shard_named_like_the_dataset_manifest(tmp_path, refiner):
    _shard(tmp_path / "in", "a.tar", {"a1": {"digit": 1}})
    _shard(tmp_path / "in", "manifest.tar", {"m1": {"digit": 1}})
    refused, checked = _refused(tmp_path / "in", tmp_path / "out", refiner)
    assert "shard manifest.tar would have its manifest written as manifest.parquet" in refused
    assert "manifest.tar" in checked
