"""Input manifests beside the shards, read back by pandas and pyarrow."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline import manifest, shards
from pipeline.data.output import Failure, write_dataset, write_labelled_shard
from pipeline.version import __version__


def _samples(rng, start, count):
    return [
        (f"k{i:03d}", rng.integers(0, 256, (4, 5), dtype=np.uint8), {"class": i % 10, "gaze": [0.0, 0.6, -0.8], "font": "f.ttf"})
        for i in range(start, start + count)
    ]


def test_shard_manifest_has_one_row_per_sample_with_hashes_and_labels(tmp_path, rng):
    samples = _samples(rng, 0, 3)
    stats = write_labelled_shard(str(tmp_path), "d-000000.tar", samples)
    assert stats == json.loads((tmp_path / "d-000000_stats.json").read_text())
    assert (stats["samples"], stats["ok"]) == (3, 3)
    frame = pd.read_parquet(tmp_path / "d-000000.parquet")
    table = pq.read_table(tmp_path / "d-000000.parquet")
    assert table.column_names[: len(manifest.COLUMNS)] == manifest.COLUMNS
    assert frame["key"].tolist() == ["k000", "k001", "k002"]
    assert set(frame["shard"]) == {"d-000000.tar"} and set(frame["status"]) == {"ok"}
    assert frame[["height", "width", "channels", "bit_depth"]].drop_duplicates().values.tolist() == [[4, 5, 1, 8]]
    assert frame["package_version"].iloc[0] == __version__
    # Scalars keep their types; lists are JSON text; the stored JSON is kept verbatim.
    assert str(table.schema.field("label.class").type) == "int64"
    assert frame["label.class"].tolist() == [0, 1, 2]
    assert json.loads(frame["label.gaze"].iloc[0]) == [0.0, 0.6, -0.8]
    members = {s.key: s for s in shards.iter_shard(str(tmp_path / "d-000000.tar"))}
    for _, row in frame.iterrows():
        raw = members[row["key"]]
        assert row["labels_json"] == raw.label_bytes.decode()
        assert row["input_sha256"] == manifest.sha256(raw.image_bytes)


def test_dataset_manifest_and_summary_gather_every_shard_including_failures(tmp_path, rng):
    items = _samples(rng, 0, 3) + [Failure("k003", shards.UNDECODABLE_IMAGE, "/data/x.png: cannot read")] + _samples(rng, 4, 2)
    summary = write_dataset(str(tmp_path), "d", items, per_shard=2)
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert (summary["shards"], summary["samples"], summary["ok"], summary["failed"]) == (3, 6, 5, 1)
    frame = pd.read_parquet(tmp_path / "manifest.parquet")
    same = pq.read_table(tmp_path / "manifest.parquet").to_pandas()
    pd.testing.assert_frame_equal(frame, same)
    assert frame["key"].tolist() == ["k000", "k001", "k002", "k003", "k004", "k005"]
    failed = frame[frame["status"] != "ok"].iloc[0]
    # Recorded in the shard being filled when it was met; that shard's tar lacks it.
    assert (failed["key"], failed["shard"], failed["error"]) == ("k003", "d-000001.tar", "/data/x.png: cannot read")
    keys = [s.key for s in shards.iter_shard(str(tmp_path / "d-000001.tar"))]
    assert keys == ["k002", "k004"]
    assert manifest.read_manifest(str(tmp_path)).shape == frame.shape
    stats = json.loads((tmp_path / "d-000001_stats.json").read_text())
    assert stats["by_status"] == {"ok": 2, shards.UNDECODABLE_IMAGE: 1}
