"""The shard format: codecs, keys, deterministic tars, and reading back with other tools."""

import hashlib
import io
import json
import os
import subprocess
import tarfile

import numpy as np
import pytest
import webdataset as wds

from pipeline import shards
from pipeline.data.output import write_labelled_shard


def _samples(rng, count=5):
    out = []
    for i in range(count):
        image = rng.integers(0, 256, (6, 9), dtype=np.uint8)
        out.append((f"sample-{i:03d}", image, {"class": i % 3, "name": f"n{i}", "vector": [0.5, -1.0, i]}))
    return out


def _write(folder, name, samples):
    return write_labelled_shard(str(folder), name, samples)


# ---------------------------------------------------------------- codecs


def test_png_codec_round_trips_grey_rgb_and_16_bit(rng):
    grey = rng.integers(0, 256, (7, 11), dtype=np.uint8)
    rgb = rng.integers(0, 256, (7, 11, 3), dtype=np.uint8)
    depth = rng.integers(0, 65536, (7, 11), dtype=np.uint16)
    depth[0, 0], depth[0, 1] = 0, 65535  # the extremes survive
    for image in (grey, rgb, depth):
        back = shards.decode_png(shards.encode_png(image))
        assert back.dtype == image.dtype and back.shape == image.shape
        np.testing.assert_array_equal(back, image)
    assert shards.image_geometry(shards.decode_png(shards.encode_png(depth))) == (7, 11, 1, 16)
    assert shards.image_geometry(shards.decode_png(shards.encode_png(rgb))) == (7, 11, 3, 8)


def test_png_codec_refuses_what_it_cannot_store_and_names_bad_bytes():
    with pytest.raises(ValueError, match="cannot store"):
        shards.encode_png(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="cannot store"):
        shards.encode_png(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(shards.SampleError) as info:
        shards.decode_png(b"\x89PNG\r\n\x1a\n but then garbage")
    assert info.value.kind == shards.UNDECODABLE_IMAGE


def test_float_conversion_is_the_inverse_for_8_and_16_bit(rng):
    for image, bits in ((rng.integers(0, 256, (5, 6), dtype=np.uint8), 8), (rng.integers(0, 65536, (5, 6), dtype=np.uint16), 16)):
        array = shards.to_float(image)
        assert array.shape == (1, 5, 6) and 0.0 <= array.min() and array.max() <= 1.0
        np.testing.assert_array_equal(shards.from_float(array, bits), image)


def test_labels_are_canonical_json():
    assert shards.encode_labels({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'
    assert shards.decode_labels(b'{"a": 1}') == {"a": 1}
    for bad in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        with pytest.raises(shards.SampleError) as info:
            shards.decode_labels(bad)
        assert info.value.kind == shards.INVALID_LABELS


@pytest.mark.parametrize("key", ["a.b", "a/b", "..", "", "a b", "ü"])
def test_bad_keys_are_refused_when_writing(tmp_path, key):
    assert shards.key_problem(key)
    with pytest.raises(shards.SampleError):
        shards.write_shard(str(tmp_path / "x-000000.tar"), [(key, {"png": b"", "json": b"{}"})])


# ---------------------------------------------------------------- writing


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_samples_give_byte_identical_tars(tmp_path, rng):
    samples = _samples(rng)
    _write(tmp_path / "a", "s-000000.tar", samples)
    _write(tmp_path / "b", "s-000000.tar", samples)
    assert digest(tmp_path / "a" / "s-000000.tar") == digest(tmp_path / "b" / "s-000000.tar")
    changed = samples[:-1] + [(samples[-1][0], samples[-1][1], {"class": 99})]
    _write(tmp_path / "c", "s-000000.tar", changed)
    assert digest(tmp_path / "a" / "s-000000.tar") != digest(tmp_path / "c" / "s-000000.tar")


def test_tar_members_are_adjacent_per_sample_with_fixed_metadata(tmp_path, rng):
    _write(tmp_path, "s-000000.tar", _samples(rng, 3))
    listing = subprocess.run(
        ["tar", "tf", str(tmp_path / "s-000000.tar")], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(listing) == 6
    for i in range(3):  # a sample's two members sit next to each other
        assert sorted(listing[2 * i : 2 * i + 2]) == [f"sample-{i:03d}.json", f"sample-{i:03d}.png"]
    with tarfile.open(tmp_path / "s-000000.tar") as tar:
        assert {(m.mtime, m.uname, m.gname) for m in tar.getmembers()} == {(0, "simgan", "simgan")}


def test_writer_leaves_no_partial_tar_when_a_sample_is_bad(tmp_path):
    target = tmp_path / "s-000000.tar"
    with pytest.raises(shards.SampleError):
        shards.write_shard(str(target), [("good", {"png": b"x", "json": b"{}"}), ("bad.key", {"png": b"x"})])
    assert not target.exists()


# ---------------------------------------------------------------- reading back


def test_round_trip_through_webdataset_reader(tmp_path, rng):
    samples = _samples(rng)
    _write(tmp_path, "s-000000.tar", samples[:3])
    _write(tmp_path, "s-000001.tar", samples[3:])
    urls = [str(tmp_path / "s-000000.tar"), str(tmp_path / "s-000001.tar")]
    read = list(wds.WebDataset(urls, shardshuffle=False).decode("l8"))  # l8: 8-bit grey numpy
    assert [r["__key__"] for r in read] == [key for key, _, _ in samples]
    for row, (key, image, labels) in zip(read, samples):
        assert row["json"] == labels
        np.testing.assert_array_equal(row["png"], image)
    ours = [shards.decode_sample(s) for s in shards.iter_shard(urls[0])]
    assert [s.key for s in ours] == [key for key, _, _ in samples[:3]]
    for sample, (_, image, labels) in zip(ours, samples):
        np.testing.assert_array_equal(sample.image, image)
        assert sample.labels == labels


def test_round_trip_through_webdataset_reader_raw_bytes(tmp_path, rng):
    samples = _samples(rng, 2)
    _write(tmp_path, "s-000000.tar", samples)
    read = list(wds.WebDataset(str(tmp_path / "s-000000.tar"), shardshuffle=False))
    for row, (key, image, labels) in zip(read, samples):
        assert row["__key__"] == key
        np.testing.assert_array_equal(shards.decode_png(row["png"]), image)
        assert json.loads(row["json"]) == labels


@pytest.mark.slow
def test_round_trip_through_ray_data(tmp_path, rng, ray_local):
    import ray

    samples = _samples(rng, 6)
    _write(tmp_path, "s-000000.tar", samples[:4])
    _write(tmp_path, "s-000001.tar", samples[4:])
    # The folder also holds the Parquet manifests: read only the tars.
    rows = ray.data.read_webdataset(str(tmp_path), file_extensions=["tar"]).take_all()
    by_key = {row["__key__"]: row for row in rows}
    assert sorted(by_key) == [key for key, _, _ in samples]
    for key, image, labels in samples:
        np.testing.assert_array_equal(np.asarray(by_key[key]["png"]), image)
        assert by_key[key]["json"] == labels


def test_reader_reports_rather_than_raises(tmp_path, rng):
    good = tmp_path / "s-000000.tar"
    _write(tmp_path, good.name, _samples(rng, 4))
    data = good.read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    items = list(shards.iter_shard(str(tmp_path / "cut.tar")))
    problems = [i for i in items if isinstance(i, shards.Problem)]
    assert any(p.kind == shards.TRUNCATED_TAR and p.shard == "cut.tar" for p in problems)
    (tmp_path / "junk.tar").write_bytes(os.urandom(2000))
    kinds = {i.kind for i in shards.iter_shard(str(tmp_path / "junk.tar")) if isinstance(i, shards.Problem)}
    assert kinds & {shards.UNREADABLE_TAR, shards.TRUNCATED_TAR}


def test_reading_a_tar_written_by_plain_tarfile(tmp_path, rng):
    """Shards from other tools (plain tar) read the same way."""
    image = rng.integers(0, 256, (3, 4), dtype=np.uint8)
    path = tmp_path / "other-000000.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("k1.png", shards.encode_png(image)), ("k1.json", b'{"x": 1}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (sample,) = list(shards.iter_shard(str(path)))
    decoded = shards.decode_sample(sample)
    assert decoded.key == "k1" and decoded.labels == {"x": 1}
    np.testing.assert_array_equal(decoded.image, image)
