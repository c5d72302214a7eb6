"""The reading stages: each turns what it cannot pass on into a Problem, in place."""

import numpy as np
import pytest

from pipeline import reading, shards
from pipeline.reading import Geometry
from pipeline.shards import Problem, RawSample, Sample


def _sample(key, shape=(4, 5), dtype=np.uint8, labels=None, shard="s.tar"):
    return Sample(shard, key, np.zeros(shape, dtype), {"class": 1} if labels is None else labels)


def _raw(key, image=None, labels=b'{"class":1}', shard="s.tar"):
    png = shards.encode_png(np.zeros((4, 5), np.uint8)) if image is None else image
    return RawSample(shard, key, {shards.IMAGE_EXT: png, shards.LABEL_EXT: labels})


def _where(items):
    return [(item.key, item.kind if isinstance(item, Problem) else "sample") for item in items]


def test_geometry_of_an_image_and_its_text():
    assert Geometry.of(np.zeros((28, 28), np.uint8)) == Geometry(28, 28, 1, 8)
    assert Geometry.of(np.zeros((7, 11), np.uint16)) == Geometry(7, 11, 1, 16)
    rgb = Geometry.of(np.zeros((6, 9, 3), np.uint8))
    assert rgb.shape == (3, 6, 9) and str(rgb) == "6x9x3 8-bit"
    assert rgb.blank().shape == (6, 9, 3) and Geometry(2, 3, 1, 16).blank().dtype == np.uint16


def test_decode_turns_an_undecodable_sample_into_a_problem_in_place():
    problem = Problem("s.tar", None, shards.TRUNCATED_TAR, "tar ends early")
    items = [_raw("a"), _raw("broken", image=b"not a png"), _raw("badjson", labels=b"{"), problem]
    out = list(reading.decode(items))
    assert _where(out) == [("a", "sample"), ("broken", shards.UNDECODABLE_IMAGE),
                           ("badjson", shards.INVALID_LABELS), (None, shards.TRUNCATED_TAR)]
    assert out[3] is problem and out[0].labels == {"class": 1}


def test_check_geometry_names_both_geometries():
    items = [_sample("a"), _sample("wide", shape=(4, 9)), _sample("deep", dtype=np.uint16)]
    out = list(reading.check_geometry(items, Geometry(4, 5, 1, 8), against="the refiner's input"))
    assert _where(out) == [("a", "sample"), ("wide", shards.WRONG_SHAPE), ("deep", shards.WRONG_SHAPE)]
    assert out[1].message == "image is 4x9x1 8-bit, the refiner's input is 4x5x1 8-bit"
    assert "4x5x1 16-bit" in out[2].message and "4x5x1 8-bit" in out[2].message


def test_check_geometry_without_one_expects_the_first_samples():
    items = [Problem("s.tar", "x", shards.MISSING_IMAGE, "no .png member"), _sample("a", shape=(3, 3)),
             _sample("b"), _sample("c", shape=(3, 3), dtype=np.uint16)]
    out = list(reading.check_geometry(items))
    assert _where(out) == [("x", shards.MISSING_IMAGE), ("a", "sample"), ("b", shards.WRONG_SHAPE),
                           ("c", shards.WRONG_SHAPE)]
    assert "the folder's first image is 3x3x1 8-bit" in out[2].message
    # As floats only size and channels show: another bit depth passes.
    relaxed = list(reading.check_geometry(items, match_depth=False))
    assert _where(relaxed)[3] == ("c", "sample")


def test_require_label_turns_a_sample_without_it_into_a_problem():
    items = [_sample("a"), _sample("b", labels={"other": 2}), Problem("s.tar", "c", shards.BAD_KEY, "dot")]
    out = list(reading.require_label(items, "class"))
    assert _where(out) == [("a", "sample"), ("b", shards.INVALID_LABELS), ("c", shards.BAD_KEY)]
    assert out[1].message == "no 'class' label"


def test_samples_composes_the_stages_over_shards_in_order(tmp_path):
    def members(key, shape=(4, 5), labels=None):
        return key, {shards.IMAGE_EXT: shards.encode_png(np.zeros(shape, np.uint8)),
                     shards.LABEL_EXT: shards.encode_labels({"class": 1} if labels is None else labels)}

    first = str(tmp_path / "d-000000.tar")
    second = str(tmp_path / "d-000001.tar")
    shards.write_shard(first, [members("a"), members("nolabel", labels={}), members("b")])
    shards.write_shard(second, [members("big", shape=(8, 8)), ("broken", {"png": b"x", "json": b"{}"}), members("c")])
    out = list(reading.samples([first, second], label="class"))
    assert _where(out) == [("a", "sample"), ("nolabel", shards.INVALID_LABELS), ("b", "sample"),
                           ("big", shards.WRONG_SHAPE), ("broken", shards.UNDECODABLE_IMAGE), ("c", "sample")]
    assert [item.shard for item in out] == ["d-000000.tar"] * 3 + ["d-000001.tar"] * 3
    assert "8x8x1 8-bit" in out[3].message and "4x5x1 8-bit" in out[3].message


def test_load_images_keeps_keys_shards_and_problems(tmp_path):
    def members(key, value):
        return key, {shards.IMAGE_EXT: shards.encode_png(np.full((4, 5), value, np.uint8)),
                     shards.LABEL_EXT: shards.encode_labels({"class": value})}

    shards.write_shard(str(tmp_path / "d-000000.tar"), [members("z", 1), members("a", 2)])
    shards.write_shard(str(tmp_path / "d-000001.tar"), [members("m", 3), ("bad", {"png": b"x", "json": b"{}"})])
    found = reading.load_images(str(tmp_path))
    assert found.keys == ["z", "a", "m"] and found.shards == ["d-000000.tar"] * 2 + ["d-000001.tar"]
    assert found.geometry == Geometry(4, 5, 1, 8) and found.shape == (1, 4, 5) and len(found) == 3
    assert [(p.key, p.kind) for p in found.problems] == [("bad", shards.UNDECODABLE_IMAGE)]
    ordered = found.by_name()
    assert ordered.names == ["d-000000.tar/a", "d-000000.tar/z", "d-000001.tar/m"]
    assert [labels["class"] for labels in ordered.labels] == [2, 1, 3]
    np.testing.assert_allclose(ordered.images[:, 0, 0, 0] * 255, [2, 1, 3])


def test_load_images_of_a_folder_without_usable_samples_is_empty(tmp_path):
    shards.write_shard(str(tmp_path / "d-000000.tar"), [("bad", {"png": b"x", "json": b"{}"})])
    found = reading.load_images(str(tmp_path))
    assert len(found) == 0 and found.geometry is None and len(found.problems) == 1


@pytest.mark.parametrize("stage", [reading.decode, reading.check_geometry,
                                   lambda items: reading.require_label(items, "class")])
def test_every_stage_passes_problems_on_untouched(stage):
    problems = [Problem("s.tar", None, shards.EMPTY_SHARD, "shard holds no samples"),
                Problem("s.tar", "k", shards.DUPLICATE_KEY, "twice")]
    out = list(stage(problems))
    assert len(out) == 2 and all(a is b for a, b in zip(out, problems))
