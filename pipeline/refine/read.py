"""Read input shards into columns: decoded images plus a record of every sample.

Runs as Ray Data CPU tasks, each reading a group of consecutive shards. Every input sample becomes a row, good
or bad; problems found in the tar (unreadable, truncated, empty) become rows without a
key. Rows that cannot be refined carry a zero image of the refiner's geometry so the
image column keeps one fixed shape (it is never written out).
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import numpy as np

from pipeline import manifest, shards

# Geometry of a row whose image could not be decoded.
UNKNOWN = -1


def image_shape(height: int, width: int, channels: int) -> tuple[int, ...]:
    return (height, width) if channels == 1 else (height, width, channels)


def image_dtype(bit_depth: int) -> np.dtype:
    return np.dtype(np.uint16) if bit_depth == 16 else np.dtype(np.uint8)


def geometry_text(geometry: tuple[int, int, int, int]) -> str:
    height, width, channels, bits = geometry
    return f"{height}x{width}, {channels} channel(s), {bits}-bit"


def read_shard(
    path: str, geometry: tuple[int, int, int, int], limits: shards.Limits = shards.DEFAULT_LIMITS
) -> dict[str, np.ndarray]:
    """All rows of the shard at `path`, as numpy columns; `geometry` is what the refiner takes."""
    shard = os.path.basename(path)
    source = manifest.file_record(path, mtime=True)
    shape, dtype = image_shape(*geometry[:3]), image_dtype(geometry[3])
    rows: list[dict] = []
    images: list[np.ndarray] = []
    blank = np.zeros(shape, dtype)

    def add(key, status=manifest.OK, error="", found=None, label_bytes=b"", input_bytes=None, image=blank):
        height, width, channels, bits = found or (UNKNOWN,) * 4
        rows.append(
            {
                "key": key or "",
                "status": status,
                "error": error,
                "height": height,
                "width": width,
                "channels": channels,
                "bit_depth": bits,
                "label_bytes": label_bytes or b"",
                "input_sha256": manifest.sha256(input_bytes) or "",
            }
        )
        images.append(image)

    for item in shards.iter_shard(path, limits):
        if isinstance(item, shards.Problem):
            add(item.key, item.kind, item.message)
            continue
        try:
            sample = shards.decode_sample(item, limits)
        except shards.SampleError as exc:
            # Labels over the limit are not carried on (to the driver, with the row):
            # they could never be stored, and they can be as large as a member.
            labels = item.label_bytes if len(item.label_bytes) <= limits.label_bytes else b""
            add(item.key, exc.kind, exc.message, label_bytes=labels, input_bytes=item.image_bytes)
            continue
        found = shards.image_geometry(sample.image)
        if found != tuple(geometry):
            add(
                item.key,
                shards.WRONG_SHAPE,
                f"image is {geometry_text(found)}; the refiner takes {geometry_text(geometry)}",
                found,
                item.label_bytes,
                item.image_bytes,
            )
            continue
        add(item.key, found=found, label_bytes=item.label_bytes, input_bytes=item.image_bytes, image=sample.image)

    columns = {name: np.array([row[name] for row in rows], dtype=object) for name in rows[0]}
    for name in ("height", "width", "channels", "bit_depth"):
        columns[name] = columns[name].astype(np.int32)
    columns["shard"] = np.full(len(rows), shard, dtype=object)
    # What was read, for the commit marker: a resumed run redoes the shard if it changed.
    columns["shard_file"] = np.full(len(rows), json.dumps(source, sort_keys=True), dtype=object)
    columns["index"] = np.arange(len(rows), dtype=np.int64)
    # Lets the writer know when it holds every row of this shard, in any arrival order.
    columns["shard_rows"] = np.full(len(rows), len(rows), dtype=np.int64)
    columns["image"] = np.stack(images)
    return columns


def read_shards(
    paths: list[str], geometry: tuple[int, int, int, int], limits: shards.Limits, block_rows: int
) -> Iterator[dict[str, np.ndarray]]:
    """Rows of consecutive shards, as blocks of at least `block_rows` rows (the last may
    be smaller); a shard's rows may span blocks. Reading many tiny shards in one task,
    into blocks of a useful size, is what keeps their cost near that of a few large ones:
    Ray's per-task and per-block costs are paid per group, not per shard."""
    parts: list[dict[str, np.ndarray]] = []
    rows = 0
    for path in paths:
        parts.append(read_shard(path, geometry, limits))
        rows += len(parts[-1]["key"])
        if rows >= block_rows:
            yield _concat(parts)
            parts, rows = [], 0
    if parts:
        yield _concat(parts)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def file_size(path: str) -> int:
    """Size of the file at `path`; 0 when it vanished since it was listed (its read task
    then reports it)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def group_shards(paths: list[str], target_bytes: int) -> list[list[str]]:
    """Consecutive shards in groups of about `target_bytes` of tar (a shard larger than
    that is a group of its own); order is kept, so output never depends on grouping
    beyond which task reads what."""
    groups: list[list[str]] = []
    size = 0
    for path in paths:
        bytes_ = file_size(path)
        if not groups or size + bytes_ > target_bytes:
            groups.append([])
            size = 0
        groups[-1].append(path)
        size += bytes_
    return groups


def probe_geometry(
    paths: list[str], wanted: int = 32, limits: shards.Limits = shards.DEFAULT_LIMITS
) -> tuple[int, int, int, int] | None:
    """The most common geometry among the first `wanted` decodable samples, or None."""
    counts: dict[tuple[int, int, int, int], int] = {}
    seen = 0
    for path in paths:
        for item in shards.iter_shard(path, limits):
            if isinstance(item, shards.Problem):
                continue
            try:
                image = shards.decode_png(item.image_bytes, limits.image_pixels)
            except shards.SampleError:
                continue
            geometry = shards.image_geometry(image)
            counts[geometry] = counts.get(geometry, 0) + 1
            seen += 1
            if seen >= wanted:
                return max(counts, key=counts.get)
    return max(counts, key=counts.get) if counts else None
