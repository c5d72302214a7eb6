"""Write labelled samples as a shard plus its input manifest (simulators, importers)."""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np

from pipeline import manifest, shards


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
                geometry=shards.image_geometry(image),
                labels=labels,
                labels_json=label_bytes.decode("utf-8"),
                input_bytes=png,
            )
        )
    rows.extend(failures)
    shards.write_shard(os.path.join(out_dir, shard_name), members)
    return manifest.commit_shard(out_dir, shard_name, rows)
