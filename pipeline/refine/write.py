"""Encode refined images and commit output shards: tar, manifest, then the stats marker.

`encode_batch` runs as a Ray Data CPU task. `ShardWriter` runs in the driver: it gathers
each shard's rows (they may arrive in several batches), records keys already seen in an
earlier shard as duplicates, and commits the shard once it holds all of its rows.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

from pipeline import manifest, shards
from pipeline.reading import Geometry


def encode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PNG bytes and their sha256 for refined rows; the image column is dropped."""
    images, status = batch.pop("image"), batch["status"]
    pngs = np.empty(len(status), dtype=object)
    hashes = np.empty(len(status), dtype=object)
    for i in range(len(status)):
        if status[i] == manifest.OK:
            pngs[i] = shards.encode_png(images[i])
            hashes[i] = manifest.sha256(pngs[i])
        else:
            pngs[i], hashes[i] = b"", ""
    batch["output_png"] = pngs
    batch["output_sha256"] = hashes
    return batch


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
    # Hashes were taken where the bytes were (read and encode tasks); the driver never
    # receives the input images.
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


class ShardWriter:
    """Commits shards into `out_dir` as their rows complete.

    `seen_keys` maps keys committed earlier (in this or a previous run) to their shard;
    shards must be fed in input order for "first occurrence wins" to be deterministic.
    """

    def __init__(self, out_dir: str, refiner_hash: str, seen_keys: dict[str, str], on_commit: Callable[[dict], None]):
        self.out_dir = out_dir
        self.refiner_hash = refiner_hash
        self.seen_keys = seen_keys
        self.on_commit = on_commit
        self.pending: dict[str, list[dict]] = {}
        self.tables: dict = {}  # manifests committed by this writer, by shard name

    def add_batch(self, batch: dict[str, np.ndarray]) -> None:
        names = list(batch)
        for values in zip(*(batch[name] for name in names)):
            row = dict(zip(names, values))
            rows = self.pending.setdefault(row["shard"], [])
            rows.append(row)
            if len(rows) == row["shard_rows"]:
                self.commit(row["shard"], sorted(self.pending.pop(row["shard"]), key=lambda r: r["index"]))

    def unfinished(self) -> list[str]:
        return sorted(self.pending)

    def commit(self, shard: str, rows: list[dict]) -> dict:
        members = []
        for row in rows:
            key = row["key"]
            if key and row["status"] == manifest.OK:
                first = self.seen_keys.get(key)
                if first is not None:
                    row["status"] = shards.DUPLICATE_KEY
                    row["error"] = f"key already used in shard {first}; the first occurrence was kept"
                    row["output_sha256"] = ""
                    continue
                self.seen_keys[key] = shard
                members.append((key, {shards.IMAGE_EXT: row["output_png"], shards.LABEL_EXT: row["label_bytes"]}))
        tar_path = os.path.join(self.out_dir, shard)
        shards.write_shard(tar_path, members)
        stats = manifest.commit_shard(
            self.out_dir,
            shard,
            [_manifest_row(row, self.refiner_hash) for row in rows],
            extra={
                "refiner_hash": self.refiner_hash,
                "input": json.loads(rows[0]["shard_file"]),
                "output": manifest.file_record(tar_path),
            },
            tables=self.tables,
            record_manifest=True,
        )
        self.on_commit(stats)
        return stats
