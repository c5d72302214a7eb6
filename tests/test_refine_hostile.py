"""Hostile shards through refine-dataset: one run over a folder of them, each beside good
samples. Every case must end as a row with its kind and reason, the run must exit 0
with the count, and every good sample of the run must be refined."""

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from click.testing import CliRunner

from helpers.tars import gzip_bomb, link, png, png_header, tar_bytes, write
from pipeline import manifest, shards
from pipeline.commands.refine import refine
from pipeline.data.validate import scan_folder
from helpers.refine import SIZE, make_refiner


def _good(prefix, count=2):
    members = []
    for i in range(count):
        image = np.random.default_rng(len(prefix) + i).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
        members += [(f"{prefix}_{i}.png", shards.encode_png(image)), (f"{prefix}_{i}.json", shards.encode_labels({"i": i}))]
    return members


NON_UTF8 = b"bad\xff".decode("utf-8", "surrogateescape")

# shard -> (members after the good ones, or raw bytes; the bad rows expected as (key, kind))
CASES = {
    "dotdot": (_good("dd") + [("../up.png", png()), ("../up.json", b"{}")], [("../up", shards.BAD_KEY)]),
    "absolute": (_good("ab") + [("/etc/x.png", png()), ("/etc/x.json", b"{}")], [("/etc/x", shards.BAD_KEY)]),
    "non_utf8": (_good("nu") + [(NON_UTF8 + ".png", png()), (NON_UTF8 + ".json", b"{}")], [("bad\\xff", shards.BAD_KEY)]),
    "zero_pixels": (_good("zp") + [("zp_bad.png", png_header(0, 0)), ("zp_bad.json", b"{}")], [("zp_bad", shards.UNDECODABLE_IMAGE)]),
    "huge_image": (_good("hi") + [("hi_bad.png", png_header(12000, 12000)), ("hi_bad.json", b"{}")], [("hi_bad", shards.IMAGE_TOO_LARGE)]),
    "links": (
        _good("ln") + [("ln_sym.png", png()), link("ln_sym.json", "ln_0.json"), link("ln_hard.png", "ln_0.png", b"1"), ("ln_hard.json", b"{}")],
        [("ln_sym", shards.MEMBER_NOT_A_FILE), ("ln_hard", shards.MEMBER_NOT_A_FILE)],
    ),
    "big_member": (_good("bm") + [("bm_bad.png", bytes(300_000)), ("bm_bad.json", b"{}")], [("bm_bad", shards.MEMBER_TOO_LARGE)]),
    "big_label": (_good("bl") + [("bl_bad.png", png()), ("bl_bad.json", b'{"i":"' + b"x" * 70_000 + b'"}')], [("bl_bad", shards.LABELS_TOO_LARGE)]),
    "compressed": (gzip_bomb(), [(None, shards.COMPRESSED_TAR)]),
    "zero_bytes": (b"", [(None, shards.UNREADABLE_TAR)]),
    "tiny_members": (tar_bytes([(f"t{i}.png", b"x") for i in range(10_000)]), [(f"t{i}", shards.MISSING_LABELS) for i in range(10_000)]),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("hostile")
    for name, (members, _) in CASES.items():
        write(root / "in" / f"{name}.tar", members if isinstance(members, bytes) else tar_bytes(members))
    write(root / "in" / "plain.tar", tar_bytes(_good("plain", 4)))
    refiner = make_refiner(str(root / "tiny.safetensors"))
    out = root / "out"
    result = CliRunner().invoke(
        refine, ["--in", str(root / "in"), "--out", str(out), "--refiner", refiner, "--batch-size", "8", "--max-member-bytes", "200000"]
    )
    rows = pq.read_table(out / manifest.DATASET_MANIFEST).to_pandas()
    return result, rows, out, root / "in"


def test_the_run_exits_zero_with_the_count(run):
    result, rows, _, _ = run
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    bad = sum(len(expected) for _, expected in CASES.values())
    assert int((rows["status"] != manifest.OK).sum()) == bad
    assert f"skipped {bad} bad sample(s) or shard(s): " in result.output
    for kind in {kind for _, expected in CASES.values() for _, kind in expected}:
        assert f"{kind}=" in result.output


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_case_is_a_row_and_the_good_samples_are_refined(run, name):
    _, rows, out, _ = run
    part = rows[rows["shard"] == f"{name}.tar"]
    bad = part[part["status"] != manifest.OK]
    found = [(None if key is None or key != key else key, kind) for key, kind in zip(bad["key"], bad["status"])]
    assert sorted(found, key=str) == sorted(CASES[name][1], key=str)
    assert bad["error"].map(lambda e: bool(e) and "\n" not in e).all()
    members, _ = CASES[name]
    expected = set() if isinstance(members, bytes) else {n.split(".")[0] for n, _ in members[:4]}
    assert set(part.loc[part["status"] == manifest.OK, "key"]) == expected
    refined = {s["__key__"] for s in wds.WebDataset(str(out / f"{name}.tar"), shardshuffle=False, empty_check=False)}
    assert refined == expected


def test_the_clean_shard_is_untouched_by_its_neighbours(run):
    _, rows, _, _ = run
    assert set(rows.loc[rows["shard"] == "plain.tar", "status"]) == {manifest.OK}
    assert os.path.exists(manifest.stats_path(str(run[2]), "plain.tar"))


def test_a_raised_label_limit_keeps_large_labels_whole(tmp_path, ray_local):
    large = shards.encode_labels({"text": "x" * 100_000})
    write(tmp_path / "in" / "a.tar", tar_bytes(_good("a") + [("a_big.png", _good("z", 1)[0][1]), ("a_big.json", large)]))
    refiner = make_refiner(str(tmp_path / "tiny.safetensors"))
    args = ["--in", str(tmp_path / "in"), "--refiner", refiner]
    result = CliRunner().invoke(refine, args + ["--out", str(tmp_path / "default")])
    assert result.exit_code == 0 and "labels_too_large=1" in result.output
    result = CliRunner().invoke(refine, args + ["--out", str(tmp_path / "raised"), "--max-label-bytes", "200000"])
    assert result.exit_code == 0, result.output
    rows = pq.read_table(tmp_path / "raised" / manifest.DATASET_MANIFEST).to_pandas().set_index("key")
    assert rows.loc["a_big", "status"] == manifest.OK and rows.loc["a_big", "label.text"] == "x" * 100_000
    assert rows.loc["a_big", "labels_json"] == large.decode()


def test_validate_shards_reports_exactly_what_the_run_skipped(run):
    _, rows, _, in_dir = run
    report = scan_folder(str(in_dir), limits=shards.Limits(member_bytes=200_000))
    reported = {(p.shard, p.key, p.kind) for p in report.problems}
    bad = rows[rows["status"] != manifest.OK]
    skipped = {(s, None if k != k else k, kind) for s, k, kind in zip(bad["shard"], bad["key"], bad["status"])}
    assert reported == skipped
    assert report.good == int((rows["status"] == manifest.OK).sum())
