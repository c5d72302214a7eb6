"""Output folders of the simulators and importers: refusing to mix runs, packing shards.

A dataset folder holds `<prefix>-NNNNNN.tar` shards, each with its input manifest and
stats file, and the folder's `manifest.parquet` and `summary.json`. Inputs that could
not become samples (an unreadable file, broken label JSON) are `Failure`s: they are
written as manifest rows with their status and reason, never dropped.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from pipeline import manifest, shards
from pipeline.dataset import write_labelled_shard
from pipeline.errors import UserError


@dataclass
class Failure:
    """An input that could not become a sample: which key it would have had, and why."""

    key: str
    kind: str  # a problem kind of pipeline.shards, e.g. UNDECODABLE_IMAGE
    message: str  # names the input file


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
    progress: Callable[[str], None] | None = None,
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
        if progress is not None:
            progress(f"{prefix}: {index} shards, {written} samples written, {failed} failed")

    for item in items:
        if isinstance(item, Failure):
            failed += 1
            failures.append(item)
            if progress is not None:
                progress(f"{prefix}: could not use {item.key}: {item.kind}: {item.message}")
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
