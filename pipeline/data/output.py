"""Writing labelled datasets (simulators, importers, tests and benchmarks): one shard with
its input manifest, a whole folder of them, and refusing to mix runs in one folder.

A dataset folder holds `<prefix>-NNNNNN.tar` shards, each with its input manifest and
stats file, and the folder's `manifest.parquet` and `summary.json`. Inputs that could
not become samples (an unreadable file, broken label JSON) are `Failure`s: they are
written as manifest rows with their status and reason, never dropped.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from pipeline import console, manifest, shards
from pipeline.errors import UserError
from pipeline.reading import Geometry

log = console.logger("pipeline.data")


@dataclass
class Failure:
    """An input that could not become a sample: which key it would have had, and why."""

    key: str
    kind: str  # a problem kind of pipeline.shards, e.g. UNDECODABLE_IMAGE
    message: str  # names the input file


def write_labelled_shard(
    out_dir: str,
    shard_name: str,
    samples: Iterable[tuple[str, np.ndarray, dict]],
    failures: Iterable[dict] = (),
) -> dict:
    """Write `(key, image, labels)` samples to `out_dir/shard_name` with its manifest.

    `failures` are manifest rows (`manifest.make_row(..., status=..., error=...)`) for
    inputs that could not become samples: they go into the manifest, not the tar, so
    nothing is dropped silently. Returns the shard's stats; the stats file, written
    last, marks the shard complete.
    """
    os.makedirs(out_dir, exist_ok=True)
    members, rows = [], []
    for key, image, labels in samples:
        png = shards.encode_png(image)
        label_bytes = shards.encode_labels(labels)
        members.append((key, {shards.IMAGE_EXT: png, shards.LABEL_EXT: label_bytes}))
        rows.append(
            manifest.make_row(
                key,
                shard_name,
                geometry=Geometry.of(image),
                labels=labels,
                labels_json=label_bytes.decode("utf-8"),
                input_sha256=manifest.sha256(png),
            )
        )
    rows.extend(failures)
    shards.write_shard(os.path.join(out_dir, shard_name), members)
    return manifest.commit_shard(out_dir, shard_name, rows)


def prepare_output(out_dir: str, prefix: str, overwrite: bool) -> None:
    """Create `out_dir`; refuse one that already holds a dataset unless `overwrite`, in
    which case the previous `prefix` shards and the folder manifest are removed."""
    os.makedirs(out_dir, exist_ok=True)
    ours = re.compile(rf"^{re.escape(prefix)}-\d{{6}}(\.tar|\.parquet|{re.escape(manifest.STATS_SUFFIX)})$")
    folder_files = (manifest.DATASET_MANIFEST, manifest.SUMMARY)
    existing = sorted(
        name
        for name in os.listdir(out_dir)
        if name.endswith((".tar", ".parquet", manifest.STATS_SUFFIX)) or name in folder_files
    )
    if not existing:
        return
    if not overwrite:
        raise UserError(
            f"{out_dir} already holds a dataset ({existing[0]}, ...); "
            "choose an empty folder or pass --overwrite"
        )
    for name in existing:
        if ours.match(name) or name in folder_files:
            os.remove(os.path.join(out_dir, name))


def failure_row(failure: Failure, shard: str) -> dict:
    return manifest.make_row(failure.key, shard, status=failure.kind, error=failure.message)


def write_dataset(
    out_dir: str,
    prefix: str,
    items: Iterable[tuple[str, np.ndarray, dict] | Failure],
    per_shard: int,
    summary_extra: dict | None = None,
) -> dict:
    """Pack `(key, image, labels)` samples into shards of `per_shard`, in order.

    A failure is recorded in the manifest of the shard being filled when it was met.
    Returns the folder summary (`manifest.write_dataset_manifest`). Raises UserError
    when no input at all could be read, listing why.
    """
    batch: list[tuple[str, np.ndarray, dict]] = []
    failures: list[Failure] = []
    index = written = failed = 0

    def flush() -> None:
        nonlocal index, written
        name = shards.shard_name(prefix, index)
        write_labelled_shard(out_dir, name, batch, [failure_row(f, name) for f in failures])
        written += len(batch)
        index += 1
        batch.clear()
        failures.clear()
        log.info(f"{prefix}: {index} shards, {written} samples written, {failed} failed")

    for item in items:
        if isinstance(item, Failure):
            failed += 1
            failures.append(item)
            log.info(f"{prefix}: could not use {item.key}: {item.kind}: {item.message}")
            continue
        # A full shard waits for the next sample, so trailing failures still have a shard.
        if len(batch) == per_shard:
            flush()
        batch.append(item)
    if not batch and not failures:
        raise UserError("no inputs found")
    if not batch:
        reasons = "; ".join(f.message for f in failures[:5])
        raise UserError(f"no samples to write: none of the {len(failures)} inputs could be read: {reasons}")
    flush()
    return manifest.write_dataset_manifest(out_dir, summary_extra)
