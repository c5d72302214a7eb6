"""Bad input is recorded, never lost: one test per kind, all from one refine run.

Each bad sample sits in its own shard next to good samples, so every test also checks
that the good samples of that shard were still refined.
"""

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from click.testing import CliRunner

from pipeline import manifest, shards
from pipeline.commands.refine import refine
from pipeline.data.validate import scan_folder
from helpers.refine import image, make_refiner, raw_tar


def _members(rng, *keys):
    out = []
    for key in keys:
        out += [(f"{key}.png", shards.encode_png(image(rng))), (f"{key}.json", shards.encode_labels({"key": key}))]
    return out


def _good_then(rng, shard, *extra, good=("a", "b")):
    """A shard with two good samples, then `extra` members."""
    return [(name, data) for name, data in _members(rng, *(f"{shard}_{g}" for g in good))] + list(extra)


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_local):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("bad")
    src = root / "in"
    png, labels = shards.encode_png(image(rng)), shards.encode_labels({"digit": 1})
    tars = {
        "corrupt_png": _good_then(rng, "corrupt", ("corrupt_bad.png", png[:40]), ("corrupt_bad.json", labels)),
        "missing_json": _good_then(rng, "nojson", ("nojson_bad.png", png)),
        "invalid_json": _good_then(rng, "badjson", ("badjson_bad.png", png), ("badjson_bad.json", b"{not json")),
        "wrong_shape": _good_then(
            rng, "shape", ("shape_bad.png", shards.encode_png(np.zeros((9, 8), np.uint8))), ("shape_bad.json", labels)
        ),
        "wrong_channels": _good_then(
            rng, "chan", ("chan_bad.png", shards.encode_png(np.zeros((8, 8, 3), np.uint8))), ("chan_bad.json", labels)
        ),
        "dot_key": _good_then(rng, "dot", ("dot_bad.x.png", png), ("dot_bad.x.json", labels)),
        "slash_key": _good_then(rng, "slash", ("sub/slash_bad.png", png), ("sub/slash_bad.json", labels)),
        "dup_in_shard": _good_then(rng, "dup", *_members(rng, "dup_a")),
        "dup_across": _good_then(rng, "across", *_members(rng, "corrupt_a")),
        "empty": [],
        # Hostile labels: the int64 overflow used to crash the manifest write after the
        # shard's tar was already written.
        "label_overflow": _good_then(rng, "overflow", ("overflow_bad.png", png), ("overflow_bad.json", b'{"n":9223372036854775808}')),
        "label_deep": _good_then(
            rng, "deep", ("deep_bad.png", png), ("deep_bad.json", b'{"n":' + b"[" * 30_000 + b"]" * 30_000 + b"}")
        ),
        "label_large": _good_then(
            rng, "large", ("large_bad.png", png), ("large_bad.json", b'{"n":"' + b"x" * 70_000 + b'"}')
        ),
        "label_nan": _good_then(rng, "nan", ("nan_bad.png", png), ("nan_bad.json", b'{"n":NaN}')),
        "label_dup": _good_then(rng, "dupname", ("dupname_bad.png", png), ("dupname_bad.json", b'{"n":1,"n":2}')),
        "label_surrogate": _good_then(rng, "sur", ("sur_bad.png", png), ("sur_bad.json", b'{"n":"\\ud800"}')),
    }
    for name, members in tars.items():
        raw_tar(str(src / f"{name}.tar"), members)
    # Truncated: a good shard cut inside its fourth sample.
    truncated = raw_tar(str(src / "truncated.tar"), _members(rng, "trunc_a", "trunc_b", "trunc_c", "trunc_d"))
    with open(truncated, "r+b") as handle:
        handle.truncate(3 * 2 * 1024 + 700)
    (src / "unreadable.tar").write_bytes(b"this is not a tar archive " * 40)

    refiner = make_refiner(str(root / "tiny.safetensors"))
    out = root / "out"
    result = CliRunner().invoke(refine, ["--in", str(src), "--out", str(out), "--refiner", refiner, "--batch-size", "4"])
    rows = pq.read_table(out / manifest.DATASET_MANIFEST).to_pandas()
    return {"result": result, "rows": rows, "out": out, "src": src, "refiner": refiner}


def _rows(run, shard):
    return run["rows"][run["rows"]["shard"] == shard]


def _refined_keys(run, shard):
    return {s["__key__"] for s in wds.WebDataset(str(run["out"] / shard), shardshuffle=False, empty_check=False)}


def _check(run, shard, kind, key, good):
    rows = _rows(run, shard)
    bad = rows[rows["status"] == kind]
    assert len(bad) == 1, rows[["key", "status", "error"]]
    if key is None:
        assert bad["key"].isna().all()  # a shard-level problem has no key
    else:
        assert bad["key"].iloc[0] == key
    assert bad["error"].iloc[0], "a failure needs a reason"
    ok = rows[rows["status"] == manifest.OK]
    assert set(ok["key"]) == set(good)
    assert _refined_keys(run, shard) == set(good)
    assert (ok["output_sha256"].notna()).all()
    assert f"{kind}=" in run["result"].output
    return bad.iloc[0]


def test_the_run_exits_zero_with_a_count_and_names_the_manifest(run):
    # Bad samples are skipped and reported; they do not fail the run.
    assert run["result"].exit_code == 0, run["result"].output
    assert "Traceback" not in run["result"].output
    bad = int((run["rows"]["status"] != manifest.OK).sum())
    assert bad == 19  # one per bad case above, and the sample the truncation cut in two
    assert f"skipped {bad} bad sample(s) or shard(s): " in run["result"].output
    assert "manifest.parquet" in run["result"].output
    # The first few are spelled out: shard, key and reason.
    assert "  corrupt_png.tar key 'corrupt_bad': undecodable_image: cannot decode PNG" in run["result"].output
    assert f"{bad - 10} more, and each with its shard, key and reason" in run["result"].output


def test_allow_failures_is_accepted_and_changes_nothing(run):
    again = CliRunner().invoke(refine, ["--in", str(run["src"]), "--out", str(run["out"]), "--refiner", run["refiner"], "--allow-failures"])
    assert again.exit_code == 0, again.output
    rows = pq.read_table(run["out"] / manifest.DATASET_MANIFEST).to_pandas()
    assert len(rows) == len(run["rows"]) and (rows["status"] != "ok").sum() == (run["rows"]["status"] != "ok").sum()


def test_truncated_tar(run):
    row = _check(run, "truncated.tar", shards.TRUNCATED_TAR, None, {"trunc_a", "trunc_b", "trunc_c"})
    assert "lost" in row["error"] or "ends" in row["error"]


def test_unreadable_tar(run):
    rows = _rows(run, "unreadable.tar")
    assert list(rows["status"]) == [shards.UNREADABLE_TAR] and rows["error"].iloc[0]
    assert _refined_keys(run, "unreadable.tar") == set()


def test_corrupt_png(run):
    row = _check(run, "corrupt_png.tar", shards.UNDECODABLE_IMAGE, "corrupt_bad", {"corrupt_a", "corrupt_b"})
    assert row["labels_json"] == '{"digit":1}' and row["input_sha256"]


def test_missing_json(run):
    _check(run, "missing_json.tar", shards.MISSING_LABELS, "nojson_bad", {"nojson_a", "nojson_b"})


def test_invalid_json(run):
    row = _check(run, "invalid_json.tar", shards.INVALID_LABELS, "badjson_bad", {"badjson_a", "badjson_b"})
    assert "parse" in row["error"]


def test_wrong_image_shape(run):
    row = _check(run, "wrong_shape.tar", shards.WRONG_SHAPE, "shape_bad", {"shape_a", "shape_b"})
    assert (row["height"], row["width"]) == (9, 8) and "8x8" in row["error"]


def test_wrong_channels(run):
    row = _check(run, "wrong_channels.tar", shards.WRONG_SHAPE, "chan_bad", {"chan_a", "chan_b"})
    assert row["channels"] == 3 and "8x8x3 8-bit" in row["error"]


def test_key_with_a_dot(run):
    row = _check(run, "dot_key.tar", shards.BAD_KEY, "dot_bad.x", {"dot_a", "dot_b"})
    assert "dot" in row["error"]


def test_key_with_a_slash(run):
    row = _check(run, "slash_key.tar", shards.BAD_KEY, "sub/slash_bad", {"slash_a", "slash_b"})
    assert "separator" in row["error"]


def test_duplicate_key_within_a_shard(run):
    rows = _rows(run, "dup_in_shard.tar")
    assert list(rows[rows["key"] == "dup_a"]["status"]) == [manifest.OK, shards.DUPLICATE_KEY]
    assert _refined_keys(run, "dup_in_shard.tar") == {"dup_a", "dup_b"}


def test_duplicate_key_across_shards(run):
    row = _check(run, "dup_across.tar", shards.DUPLICATE_KEY, "corrupt_a", {"across_a", "across_b"})
    assert "corrupt_png.tar" in row["error"]  # the first occurrence (input order) is kept
    assert "corrupt_a" in _refined_keys(run, "corrupt_png.tar")


def test_empty_shard(run):
    rows = _rows(run, "empty.tar")
    assert list(rows["status"]) == [shards.EMPTY_SHARD] and rows["key"].isna().all()
    assert os.path.exists(manifest.stats_path(str(run["out"]), "empty.tar"))


@pytest.mark.parametrize(
    "shard, kind, prefix",
    [
        ("label_overflow.tar", shards.LABEL_INT_OVERFLOW, "overflow"),
        ("label_deep.tar", shards.LABELS_TOO_DEEP, "deep"),
        ("label_large.tar", shards.LABELS_TOO_LARGE, "large"),
        ("label_nan.tar", shards.LABEL_NOT_FINITE, "nan"),
        ("label_dup.tar", shards.LABEL_DUPLICATE_KEY, "dupname"),
        ("label_surrogate.tar", shards.INVALID_LABELS, "sur"),
    ],
)
def test_hostile_labels(run, shard, kind, prefix):
    row = _check(run, shard, kind, f"{prefix}_bad", {f"{prefix}_a", f"{prefix}_b"})
    # Unusable labels are not copied into the manifest, neither as text nor as columns.
    assert row.isna()["labels_json"] and "label.n" not in run["rows"].columns
    assert os.path.exists(manifest.stats_path(str(run["out"]), shard))


def test_validate_shards_reports_exactly_what_the_run_skipped(run):
    reported = {(p.shard, p.key, p.kind) for p in scan_folder(str(run["src"])).problems}
    bad = run["rows"][run["rows"]["status"] != manifest.OK]
    skipped = {(s, None if k != k else k, kind) for s, k, kind in zip(bad["shard"], bad["key"], bad["status"])}
    assert reported == skipped
