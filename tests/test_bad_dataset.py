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


def _clashing_dataset(folder):
    """Six shards; the first clash in shard and sample order is b3's string, with an
    earlier-numbered clash of another label later in the dataset (e1) and a second
    clash in b after b3 (b4)."""
    _shard(folder, "a.tar", {"a1": {"v": 1, "w": "x"}, "a2": {"v": 2.5, "w": "y"}})
    _shard(folder, "b.tar", {"b1": {"v": 3}, "b2": {"w": "z"}, "b3": {"w": "q", "v": "three"}, "b4": {"v": True}})
    _shard(folder, "c.tar", {"c1": {"v": 4}})
    _shard(folder, "d.tar", {"a1": {"v": 5}})  # a key also in a.tar
    _shard(folder, "e.tar", {"e1": {"w": 7}})
    _shard(folder, "f.tar", {"f1": {"v": 6}})
    return shards.list_shards(str(folder))


def test_the_label_pass_in_ray_tasks_finds_what_the_pass_in_one_process_finds(tmp_path, ray_local):
    from pipeline.refine.job import _map_on_ray

    in_ray = _map_on_ray(lambda: None, {})
    paths = _clashing_dataset(tmp_path / "clash")
    with pytest.raises(shards.BadDataset) as here:
        shards.check_label_kinds(paths)
    with pytest.raises(shards.BadDataset) as there:
        shards.check_label_kinds(paths, map_shards=in_ray)
    assert "label 'v' is integer in a.tar (key 'a1') but string in b.tar (key 'b3')" in str(here.value)
    assert str(there.value) == str(here.value)

    for path in paths:  # the same shards without the clashes
        if os.path.basename(path) in ("b.tar", "e.tar"):
            os.remove(path)
    paths = shards.list_shards(str(tmp_path / "clash"))
    keys = shards.check_label_kinds(paths, map_shards=in_ray)
    assert keys == shards.check_label_kinds(paths)
    assert list(keys) == paths and keys[paths[2]] == {"a1"}


def test_refine_dataset_refuses_a_clash_found_by_ray_tasks(tmp_path, refiner, ray_local, monkeypatch):
    from pipeline.refine import job

    monkeypatch.setattr(job, "RAY_PASS_BYTES", 0)  # the pass a large data set gets
    _clashing_dataset(tmp_path / "in")
    with pytest.raises(shards.BadDataset, match=r"string in b.tar \(key 'b3'\)"):
        job.refine_dataset(str(tmp_path / "in"), str(tmp_path / "out"), refiner)
    assert not os.path.exists(tmp_path / "out")
    for name in ("b.tar", "e.tar"):
        os.remove(tmp_path / "in" / name)
    summary = job.refine_dataset(str(tmp_path / "in"), str(tmp_path / "out"), refiner)
    assert summary["ok"] == 4 and summary["header_pass_time_s"] > 0  # a1 in d.tar is a duplicate of a.tar's
    assert summary["by_status"] == {"ok": 4, "duplicate_key": 1}
