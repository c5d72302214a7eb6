"""Commit output shards: tar, manifest, then the stats marker.

`write_shards` runs as a Ray Data CPU task on a block of whole refined shards: it encodes
the PNGs, records the duplicates decided before the run (`duplicates.plan_duplicates`),
commits each shard and hands back only its stats. Every shard is written by one task
from its own rows and that plan, so the bytes do not depend on which task writes it or
when.
"""

from __future__ import annotations

import json
from typing import Iterator

import numpy as np

from pipeline import manifest, shards, storage
from pipeline.ray_session import node_id
from pipeline.reading import Geometry
from pipeline.refine.stage import REFINED_ON

# The stats field naming the Ray nodes that refined and wrote a shard: provenance that
# depends on where Ray ran the work, so it is the one field that may differ between runs
# with the same inputs (tars and manifests never do).
NODES = "nodes"


def duplicate_error(first: str) -> str:
    return f"key already used in shard {first}; the first occurrence was kept"


def _manifest_row(row: dict, refiner_hash: str) -> dict:
    labels, labels_json = None, None
    if row["label_bytes"]:
        try:
            # The read task applied the label size limit (which may be raised above the
            # default); only labels within it reach here.
            labels = shards.decode_labels(row["label_bytes"], max_bytes=len(row["label_bytes"]))
            labels_json = row["label_bytes"].decode("utf-8")
        except shards.SampleError:
            pass  # the row's status already says why the labels are unusable
    geometry = None
    if row["height"] >= 0:
        geometry = Geometry(**{name: int(row[name]) for name in manifest.GEOMETRY_COLUMNS})
    # Hashes were taken where the bytes were (read and write tasks).
    return manifest.make_row(
        row["key"] or None,
        row["shard"],
        status=row["status"],
        error=row["error"],
        geometry=geometry,
        labels=labels,
        labels_json=labels_json,
        input_sha256=row["input_sha256"] or None,
        output_sha256=row["output_sha256"] or None,
        refiner_hash=refiner_hash,
    )


def _shards(batch: dict[str, np.ndarray]) -> Iterator[tuple[str, int, int]]:
    """(shard, start, stop) of each shard's rows; refuses a shard split between blocks,
    which would commit it with rows missing."""
    names, index, total = batch["shard"], batch["index"], batch["shard_rows"]
    start = 0
    while start < len(names):
        stop = start + int(total[start])
        if stop > len(names) or names[stop - 1] != names[start] or list(index[start:stop]) != list(range(stop - start)):
            raise RuntimeError(f"shard {names[start]} reached a write task incomplete: its rows were split between blocks")
        yield str(names[start]), start, stop
        start = stop


def commit_shard(out_dir: str, shard: str, rows: list[dict], images: np.ndarray, refiner_hash: str,
                 duplicates: dict[str, str]) -> dict:
    """Write one shard from its rows in input order and refined images; its stats back.

    `duplicates`: key -> the shard that keeps it, for this shard's keys used earlier.
    """
    members = []
    for row, image in zip(rows, images):
        row["output_sha256"] = ""
        if not row["key"] or row["status"] != manifest.OK:
            continue
        first = duplicates.get(row["key"])
        if first is not None:
            row["status"] = shards.DUPLICATE_KEY
            row["error"] = duplicate_error(first)
            continue
        png = shards.encode_png(image)
        row["output_sha256"] = manifest.sha256(png)
        members.append((row["key"], {shards.IMAGE_EXT: png, shards.LABEL_EXT: row["label_bytes"]}))
    tar_path = storage.join(out_dir, shard)
    shards.write_shard(tar_path, members)
    return manifest.commit_shard(
        out_dir,
        shard,
        [_manifest_row(row, refiner_hash) for row in rows],
        extra={
            "refiner_hash": refiner_hash,
            "input": json.loads(rows[0]["shard_file"]),
            "output": manifest.file_record(tar_path),
            NODES: {"refined": rows[0].get(REFINED_ON), "written": node_id()},
        },
        record_manifest=True,
    )


def write_shards(batch: dict[str, np.ndarray], out_dir: str, refiner_hash: str,
                 duplicates: dict[str, dict[str, str]]) -> dict[str, np.ndarray]:
    """Commit every shard in `batch` (whole shards); one row of stats (JSON) per shard."""
    images = batch.pop("image")
    names = list(batch)
    stats = []
    for shard, start, stop in _shards(batch):
        rows = [{name: batch[name][i] for name in names} for i in range(start, stop)]
        stats.append(commit_shard(out_dir, shard, rows, images[start:stop], refiner_hash, duplicates.get(shard, {})))
    return {"stats": np.array([json.dumps(s) for s in stats], dtype=object)}
