"""validate-shards: every kind of bad input found, located and explained; never a traceback."""

import io
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import shards
from pipeline.cli import main
from pipeline.data.output import write_labelled_shard
from pipeline.data.validate import scan_folder, validate_folder
from pipeline.reading import Geometry


def _png(shape=(6, 8), dtype=np.uint8):
    return shards.encode_png(np.full(shape, 7, dtype))


def _raw_tar(path, members):
    """A tar written without the project's key checks, as a foreign tool might."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _good(folder, name, keys, shape=(6, 8)):
    write_labelled_shard(str(folder), name, [(k, np.zeros(shape, np.uint8), {"i": 1}) for k in keys])


@pytest.fixture
def clean(tmp_path):
    _good(tmp_path, "d-000000.tar", ["a", "b"])
    _good(tmp_path, "d-000001.tar", ["c", "d"])
    return tmp_path


def test_clean_folder_has_no_problems_and_exits_0(clean):
    report = scan_folder(str(clean))
    assert report.ok and report.shards == 2 and report.samples == 4 and report.good == 4
    assert report.geometry == Geometry(6, 8, 1, 8)
    result = CliRunner().invoke(main, ["validate-shards", str(clean)])
    assert result.exit_code == 0, result.output
    assert "no problems found" in result.output and "4 samples" in result.output


@pytest.fixture
def broken(tmp_path):
    """One folder with every kind of problem, each in a known shard and key."""
    _good(tmp_path, "d-000000.tar", ["a", "b", "c"])
    # Per-sample problems in one shard.
    _raw_tar(
        tmp_path / "d-000001.tar",
        [
            ("undecodable.png", b"not a png"),
            ("undecodable.json", b"{}"),
            ("nolabels.png", _png()),
            ("noimage.json", b"{}"),
            ("badjson.png", _png()),
            ("badjson.json", b"{oops"),
            ("notobject.png", _png()),
            ("notobject.json", b"[1, 2]"),
            ("bad.key.png", _png()),
            ("bad.key.json", b"{}"),
            ("twice.png", _png()),
            ("twice.json", b"{}"),
            ("other.png", _png()),
            ("other.json", b"{}"),
            ("twice.png", _png()),
            ("twice.json", b"{}"),
            ("a.png", _png()),  # also in shard 0
            ("a.json", b"{}"),
            ("wide.png", _png((6, 9))),
            ("wide.json", b"{}"),
            ("rgb.png", shards.encode_png(np.zeros((6, 8, 3), np.uint8))),
            ("rgb.json", b"{}"),
            ("deep.png", _png(dtype=np.uint16)),
            ("deep.json", b"{}"),
        ],
    )
    (tmp_path / "d-000002.tar").write_bytes(b"this is not a tar file at all" * 40)
    _good(tmp_path / "whole", "t-000000.tar", ["t1", "t2", "t3", "t4"])
    data = (tmp_path / "whole" / "t-000000.tar").read_bytes()
    (tmp_path / "d-000003.tar").write_bytes(data[: len(data) // 2])
    _raw_tar(tmp_path / "d-000004.tar", [])
    return tmp_path


def _found(problems):
    return {(p.shard, p.key, p.kind) for p in problems}


def test_every_problem_kind_is_found_with_its_shard_and_key(broken):
    found = _found(validate_folder(str(broken)))
    s1 = "d-000001.tar"
    expected = {
        (s1, "undecodable", shards.UNDECODABLE_IMAGE),
        (s1, "nolabels", shards.MISSING_LABELS),
        (s1, "noimage", shards.MISSING_IMAGE),
        (s1, "badjson", shards.INVALID_LABELS),
        (s1, "notobject", shards.INVALID_LABELS),
        (s1, "bad.key", shards.BAD_KEY),
        (s1, "twice", shards.DUPLICATE_KEY),  # twice within the shard
        (s1, "a", shards.DUPLICATE_KEY),  # already in d-000000.tar
        (s1, "wide", shards.WRONG_SHAPE),
        (s1, "rgb", shards.WRONG_SHAPE),
        (s1, "deep", shards.WRONG_SHAPE),
        ("d-000002.tar", None, shards.UNREADABLE_TAR),
        ("d-000003.tar", None, shards.TRUNCATED_TAR),
        ("d-000004.tar", None, shards.EMPTY_SHARD),
    }
    assert expected <= found, expected - found
    # Good samples are not blamed.
    assert not {key for _, key, _ in found} & {"b", "c", "other", "t1", "t2"}
    report = scan_folder(str(broken))
    # a, b, c, other, t1, t2 and the first "twice" are sound
    assert (report.shards, report.good) == (5, 7)


def test_inconsistent_geometry_names_both_sizes(tmp_path):
    _good(tmp_path, "d-000000.tar", ["a", "b", "c"], shape=(28, 28))
    _good(tmp_path, "d-000001.tar", ["d"], shape=(35, 55))
    (problem,) = validate_folder(str(tmp_path))
    assert (problem.shard, problem.key, problem.kind) == ("d-000001.tar", "d", shards.WRONG_SHAPE)
    assert "35x55" in problem.message and "28x28" in problem.message


def test_cli_reports_every_shard_and_exits_1_without_traceback(broken):
    result = CliRunner().invoke(main, ["validate-shards", str(broken)])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for shard in ("d-000001.tar", "d-000002.tar", "d-000003.tar", "d-000004.tar"):
        assert f"{shard}:" in result.output
    assert "key 'badjson': invalid_labels" in result.output
    assert "problems in 4 shards" in result.output


def test_cli_explains_a_missing_or_empty_folder(tmp_path):
    result = CliRunner().invoke(main, ["validate-shards", str(tmp_path / "nope")])
    assert result.exit_code != 0 and "folder not found" in result.output
    result = CliRunner().invoke(main, ["validate-shards", str(tmp_path)])
    assert result.exit_code != 0 and "holds no .tar shards" in result.output
    assert "Traceback" not in result.output
