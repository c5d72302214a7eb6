"""Read input shards into columns: decoded images plus a record of every sample.

Runs as Ray Data CPU tasks, each reading a group of consecutive whole shards. Every
input sample becomes a row, good or bad; problems found in the tar (unreadable,
truncated, empty) become rows without a key. Rows that cannot be refined carry a zero
image of the refiner's geometry so the image column keeps one fixed shape (it is never
written out).
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Iterator

import numpy as np

from pipeline import manifest, reading, shards, storage
from pipeline.reading import Geometry

# Geometry columns of a row whose image could not be decoded.
UNKNOWN = -1
# What the per-sample geometry check names as the source of the expected geometry.
REFINER_INPUT = "the refiner's input"


def _remember(items: Iterable, by_key: dict) -> Iterator:
    """Pass items on, keeping each sample by key until its row is made: a Problem the
    next stage makes of it keeps only the reason, and the row also records the sample's
    geometry, label bytes and input hash."""
    for item in items:
        if not isinstance(item, shards.Problem):
            by_key[item.key] = item
        yield item


def read_shard(path: str, geometry: Geometry, limits: shards.Limits = shards.DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """All rows of the shard at `path`, as numpy columns; `geometry` is what the refiner takes."""
    shard = os.path.basename(path)
    source = manifest.file_record(path, mtime=True)
    rows: list[dict] = []
    images: list[np.ndarray] = []
    blank = geometry.blank()

    def add(key, status=manifest.OK, error="", found=None, label_bytes=b"", input_bytes=None, image=blank):
        rows.append(
            {
                "key": key or "",
                "status": status,
                "error": error,
                **manifest.geometry_columns(found, missing=UNKNOWN),
                "label_bytes": label_bytes or b"",
                "input_sha256": manifest.sha256(input_bytes) or "",
            }
        )
        images.append(image)

    # Items are pulled one at a time through every stage, so each table holds at most
    # the sample whose item is being turned into a row.
    raw_by_key: dict[str, shards.RawSample] = {}
    decoded_by_key: dict[str, shards.Sample] = {}
    items = reading.stored([path], limits)
    items = reading.decode(_remember(items, raw_by_key), limits)
    items = reading.check_geometry(_remember(items, decoded_by_key), geometry, REFINER_INPUT)
    for item in items:
        raw, decoded = raw_by_key.pop(item.key, None), decoded_by_key.pop(item.key, None)
        found = Geometry.of(decoded.image) if decoded is not None else None
        if isinstance(item, shards.Sample):
            add(item.key, found=found, label_bytes=raw.label_bytes, input_bytes=raw.image_bytes, image=item.image)
        elif raw is None:
            add(item.key, item.kind, item.message)  # found in the tar: there is no sample to describe
        else:
            # Labels over the limit are not carried on (to the write task, with the row):
            # they could never be stored, and they can be as large as a member.
            labels = raw.label_bytes if len(raw.label_bytes) <= limits.label_bytes else b""
            add(item.key, item.kind, item.message, found, labels, raw.image_bytes)

    columns = {name: np.array([row[name] for row in rows], dtype=object) for name in rows[0]}
    for name in manifest.GEOMETRY_COLUMNS:
        columns[name] = columns[name].astype(np.int32)
    columns["shard"] = np.full(len(rows), shard, dtype=object)
    # What was read, for the commit marker: a resumed run redoes the shard if it changed.
    columns["shard_file"] = np.full(len(rows), json.dumps(source, sort_keys=True), dtype=object)
    columns["index"] = np.arange(len(rows), dtype=np.int64)
    # Lets the write task check that its block holds the whole shard.
    columns["shard_rows"] = np.full(len(rows), len(rows), dtype=np.int64)
    columns["image"] = np.stack(images)
    return columns


def read_shards(paths: list[str], geometry: Geometry, limits: shards.Limits) -> Iterator[dict[str, np.ndarray]]:
    """Rows of consecutive shards, one shard per yielded part; the job has Ray keep a
    task's output as one block, so a block holds whole shards. Reading many tiny shards
    in one task is what keeps their cost near that of a few large ones: Ray's per-task
    and per-block costs are paid per group, not per shard."""
    for path in paths:
        yield read_shard(path, geometry, limits)


def ok_keys(path: str, keys: set[str], geometry: Geometry, limits: shards.Limits = shards.DEFAULT_LIMITS) -> set[str]:
    """The keys among `keys` whose samples in the shard at `path` `read_shard` finds ok:
    the same stages, with only those samples decoded."""
    items = (item for item in reading.stored([path], limits) if item.key in keys)
    items = reading.check_geometry(reading.decode(items, limits), geometry, REFINER_INPUT)
    return {item.key for item in items if isinstance(item, shards.Sample)}


def file_size(path: str) -> int:
    """Size of the file at `path`; 0 when it vanished since it was listed (its read task
    then reports it)."""
    try:
        return storage.size(path)
    except OSError:
        return 0


def group_shards(paths: list[str], target_bytes: int, size_of: Callable[[str], int] | None = None) -> list[list[str]]:
    """Consecutive shards in groups of about `target_bytes` of tar (a shard larger than
    that is a group of its own); order is kept, so output never depends on grouping
    beyond which task reads what. `size_of` gives a shard's size (default: `file_size`)."""
    size_of = size_of or file_size
    groups: list[list[str]] = []
    size = 0
    for path in paths:
        bytes_ = size_of(path)
        if not groups or size + bytes_ > target_bytes:
            groups.append([])
            size = 0
        groups[-1].append(path)
        size += bytes_
    return groups


def probe_geometry(paths: list[str], wanted: int = 32, limits: shards.Limits = shards.DEFAULT_LIMITS) -> Geometry | None:
    """The most common geometry among the first `wanted` decodable samples, or None."""
    counts: dict[Geometry, int] = {}
    for item in reading.decode(reading.stored(paths, limits), limits):
        if isinstance(item, shards.Sample):
            found = Geometry.of(item.image)
            counts[found] = counts.get(found, 0) + 1
            if sum(counts.values()) >= wanted:
                break
    return max(counts, key=counts.get) if counts else None
