"""Parquet label manifests: one row per input sample, successes and failures alike.

The same schema serves simulator/importer output ("input manifests") and refined
output, so `manifest-diff` can compare any two of them. Per shard `<stem>.tar` there is
`<stem>.parquet` and, written last as the shard's commit marker, `<stem>_stats.json`.
A folder also gets `manifest.parquet` (all rows) and `summary.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.files import json_text
from pipeline.version import __version__

if TYPE_CHECKING:
    from pipeline.reading import Geometry

OK = "ok"
LABEL_PREFIX = "label."
DATASET_MANIFEST = "manifest.parquet"
SUMMARY = "summary.json"
STATS_SUFFIX = "_stats.json"
# Shard manifests read at once when a folder's are gathered.
READ_THREADS = 8

GEOMETRY_COLUMNS = ("height", "width", "channels", "bit_depth")
# Fixed columns, in order; label columns follow, sorted.
COLUMNS = [
    "key",
    "shard",
    "status",
    "error",
    *GEOMETRY_COLUMNS,
    "input_sha256",
    "output_sha256",
    "refiner_hash",
    "package_version",
    "labels_json",
]
_TYPES = {
    "key": pa.string(),
    "shard": pa.string(),
    "status": pa.string(),
    "error": pa.string(),
    **{name: pa.int32() for name in GEOMETRY_COLUMNS},
    "input_sha256": pa.string(),
    "output_sha256": pa.string(),
    "refiner_hash": pa.string(),
    "package_version": pa.string(),
    "labels_json": pa.string(),
}


def sha256(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def file_record(path: str, mtime: bool = False) -> dict | None:
    """Size and sha256 (and, with `mtime`, modification time in ns) of the regular file
    or object at `path`, or None when there is none to read. Commit markers hold these
    so a resumed run can tell a file that changed from one it wrote."""
    try:
        # A FIFO put in place of a file is refused, not waited on (`storage.open_input`).
        handle, size, mtime_ns = storage.open_input(path)
    except OSError:
        return None
    with handle:
        record = {"size": size, "sha256": hashlib.file_digest(handle, "sha256").hexdigest()}
    if mtime:
        record["mtime_ns"] = mtime_ns
    return record


def geometry_columns(geometry: Geometry | None, missing=None) -> dict:
    """The geometry columns of a row (`missing` in each when there is no geometry); they
    are named as `reading.Geometry`'s fields."""
    return {name: missing if geometry is None else getattr(geometry, name) for name in GEOMETRY_COLUMNS}


def make_row(
    key: str | None,
    shard: str,
    status: str = OK,
    error: str = "",
    geometry: Geometry | None = None,
    labels: dict | None = None,
    labels_json: str | None = None,
    input_sha256: str | None = None,
    output_sha256: str | None = None,
    refiner_hash: str | None = None,
) -> dict:
    """A manifest row: the one place its layout is written. `labels_json` is the label
    member as stored, when it was readable; hashes are taken where the bytes are
    (`sha256`), which in refine-dataset is not where the row is made."""
    row = {
        "key": key,
        "shard": shard,
        "status": status,
        "error": error,
        **geometry_columns(geometry),
        "input_sha256": input_sha256,
        "output_sha256": output_sha256,
        "refiner_hash": refiner_hash,
        "package_version": __version__,
        "labels_json": labels_json,
    }
    for name, value in (labels or {}).items():
        row[LABEL_PREFIX + name] = value
    return row


def _label_array(values: list) -> pa.Array:
    """Scalars keep their type; lists, objects and mixed types become JSON text."""
    present = [v for v in values if v is not None]
    kinds = {type(v) for v in present}
    if kinds and kinds <= {bool}:
        return pa.array(values, pa.bool_())
    if kinds and kinds <= {int}:
        return pa.array(values, pa.int64())
    if kinds and kinds <= {int, float}:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if kinds and kinds <= {str}:
        return pa.array(values, pa.string())
    return pa.array(
        [None if v is None else json.dumps(v, sort_keys=True, separators=(",", ":")) for v in values],
        pa.string(),
    )


def rows_to_table(rows: Iterable[dict]) -> pa.Table:
    rows = list(rows)
    label_names = sorted({name for row in rows for name in row if name.startswith(LABEL_PREFIX)})
    arrays = [pa.array([row.get(name) for row in rows], _TYPES[name]) for name in COLUMNS]
    arrays += [_label_array([row.get(name) for row in rows]) for name in label_names]
    return pa.Table.from_arrays(arrays, names=COLUMNS + label_names)


def write_manifest(path: str, rows: Iterable[dict]) -> pa.Table:
    """Write rows to Parquet, whole (`storage.writing`); returns the table."""
    table = rows_to_table(rows)
    with storage.writing(path) as stream:
        pq.write_table(table, stream)
    return table


def shard_stem(shard_path: str) -> str:
    name = os.path.basename(shard_path)
    return name[: -len(".tar")] if name.endswith(".tar") else name


def stats_path(folder: str, shard: str) -> str:
    return storage.join(folder, shard_stem(shard) + STATS_SUFFIX)


def manifest_path(folder: str, shard: str) -> str:
    return storage.join(folder, shard_stem(shard) + ".parquet")


def status_counts(rows: Iterable[dict]) -> dict[str, int]:
    return dict(sorted(Counter(row["status"] for row in rows).items()))


def commit_shard(
    folder: str,
    shard: str,
    rows: list[dict],
    extra: dict | None = None,
    record_manifest: bool = False,
) -> dict:
    """Write a shard's manifest, then its stats file: the marker that the shard is done.

    With `record_manifest`, the marker holds the manifest file's size and sha256 under
    "manifest".
    """
    path = manifest_path(folder, shard)
    write_manifest(path, rows)
    if record_manifest:
        extra = {**(extra or {}), "manifest": file_record(path)}
    stats = {
        "shard": os.path.basename(shard),
        "samples": len(rows),
        "ok": sum(row["status"] == OK for row in rows),
        "by_status": status_counts(rows),
        "package_version": __version__,
        **(extra or {}),
    }
    storage.write_bytes(stats_path(folder, shard), json_text(stats))
    return stats


def is_committed(folder: str, shard: str) -> bool:
    return storage.exists(stats_path(folder, shard)) and storage.exists(manifest_path(folder, shard))


def shard_manifest_paths(folder: str) -> list[str]:
    return [path for path in storage.list_files(folder, ".parquet") if os.path.basename(path) != DATASET_MANIFEST]


def read_manifest(path: str) -> pd.DataFrame:
    """A manifest file, or a folder's manifests (its dataset manifest when present)."""
    if storage.is_folder(path):
        dataset = storage.join(path, DATASET_MANIFEST)
        if storage.exists(dataset):
            return storage.read_table(dataset).to_pandas()
        parts = [storage.read_table(p).to_pandas() for p in shard_manifest_paths(path)]
        if not parts:
            raise FileNotFoundError(f"no manifests (*.parquet) in {path}")
        return pd.concat(parts, ignore_index=True)
    return storage.read_table(path).to_pandas()


def write_dataset_manifest(
    folder: str,
    extra_summary: dict | None = None,
    shards: list[str] | None = None,
    show_problems: int = 0,
) -> dict:
    """Gather the shard manifests into `manifest.parquet` and write `summary.json`.

    With `show_problems`, the summary lists that many rows that are not ok (shard, key,
    status, error) under "problems_shown", in manifest order.

    `shards`: the shard names whose manifests to gather (default: every `*.parquet` in
    `folder`); a job passes its own, so files it did not write are never counted.
    """
    if shards is None:
        paths = shard_manifest_paths(folder)
    else:
        paths = [manifest_path(folder, shard) for shard in shards]
    # Read a few at a time: with thousands of tiny shards the per-file cost (opening,
    # footer, and on object storage a round trip) is most of it, and waits, not work.
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        tables = list(pool.map(storage.read_table, paths))
    if tables:
        table = pa.concat_tables(tables, promote_options="permissive")
    else:
        table = rows_to_table([])
    table = table.sort_by([("shard", "ascending"), ("key", "ascending")])
    with storage.writing(storage.join(folder, DATASET_MANIFEST)) as stream:
        pq.write_table(table, stream)
    statuses = table.column("status").to_pylist()
    summary = {
        "shards": len(tables),
        "samples": len(statuses),
        "ok": statuses.count(OK),
        "failed": len(statuses) - statuses.count(OK),
        "by_status": dict(sorted(Counter(statuses).items())),
        "package_version": __version__,
        **(extra_summary or {}),
    }
    if show_problems:
        columns = ["shard", "key", "status", "error"]
        bad = table.select(columns).filter(pa.compute.not_equal(table.column("status"), OK)).slice(0, show_problems)
        summary["problems_shown"] = bad.to_pylist()
    storage.write_bytes(storage.join(folder, SUMMARY), json_text(summary))
    return summary
