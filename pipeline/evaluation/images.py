"""Load a shard folder into arrays for evaluation, keeping a record of what was unusable.

Evaluation needs whole datasets in memory (they are small: thousands of images), so
this reads every shard once through `pipeline.shards` and returns float images, labels
and keys. Samples that cannot be used are listed as problems (shard, key, why) and
reported with the results, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline import shards
from pipeline.errors import UserError


@dataclass
class ImageSet:
    """Images as N x C x H x W float32 in [0, 1], with their labels and keys."""

    folder: str
    images: np.ndarray
    labels: list[dict]
    keys: list[str]
    shards: list[str]
    problems: list[shards.Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def problem_records(self) -> list[dict]:
        return [{"shard": p.shard, "key": p.key, "kind": p.kind, "message": p.message} for p in self.problems]


def load_folder(folder: str, limit: int | None = None, require: str | None = None) -> ImageSet:
    """Every usable sample of the shards in `folder` (at most `limit`, in shard order).

    `require` names a label every sample must carry (e.g. "class"); a sample without it
    is recorded as a problem. Images of a size other than the first one's are recorded
    too, since one estimator cannot take both.
    """
    paths = shards.require_shards(folder)
    images, labels, keys, names, problems = [], [], [], [], []
    for path in paths:
        for item in shards.iter_shard(path):
            if isinstance(item, shards.Problem):
                problems.append(item)
                continue
            if limit is not None and len(keys) >= limit:
                continue  # keep reading: problems later in the folder are still reported
            try:
                sample = shards.decode_sample(item)
            except shards.SampleError as exc:
                problems.append(shards.Problem(item.shard, item.key, exc.kind, exc.message))
                continue
            if require is not None and require not in sample.labels:
                problems.append(
                    shards.Problem(item.shard, item.key, shards.INVALID_LABELS, f"no {require!r} label")
                )
                continue
            array = shards.to_float(sample.image)
            if images and array.shape != images[0].shape:
                problems.append(
                    shards.Problem(
                        item.shard,
                        item.key,
                        shards.WRONG_SHAPE,
                        f"image is {array.shape}, the folder's first image is {images[0].shape}",
                    )
                )
                continue
            images.append(array)
            labels.append(sample.labels)
            keys.append(sample.key)
            names.append(sample.shard)
    if not images:
        detail = f" ({len(problems)} problems, first: {problems[0]})" if problems else ""
        raise UserError(f"{folder} holds no usable samples{detail}")
    return ImageSet(folder, np.stack(images), labels, keys, names, problems)


def class_labels(images: ImageSet) -> np.ndarray:
    return np.asarray([int(labels["class"]) for labels in images.labels], dtype=np.int64)


def gaze_labels(images: ImageSet) -> np.ndarray:
    """Unit 3-vectors, normalised again in case a source stored them rounded."""
    vectors = np.asarray([labels["gaze"] for labels in images.labels], dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != 3:
        raise UserError(f"{images.folder}: 'gaze' labels must be 3-vectors, got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise UserError(f"{images.folder}: a 'gaze' label is the zero vector")
    return vectors / norms


def load_keys(folder: str, keys: list[str]) -> dict[str, np.ndarray]:
    """Stored images (uint8/uint16 as decoded) of the given keys, where found in `folder`."""
    wanted, found = set(keys), {}
    for path in shards.list_shards(folder):
        for item in shards.iter_shard(path):
            if isinstance(item, shards.RawSample) and item.key in wanted and item.key not in found:
                try:
                    found[item.key] = shards.decode_png(item.image_bytes)
                except shards.SampleError:
                    continue  # the evaluation's problem list already names it
            if len(found) == len(wanted):
                return found
    return found


def first_keys(folder: str, count: int) -> list[str]:
    """The first `count` well-formed keys of a folder, in shard order."""
    keys: list[str] = []
    for path in shards.list_shards(folder):
        for item in shards.iter_shard(path):
            if isinstance(item, shards.RawSample):
                keys.append(item.key)
                if len(keys) == count:
                    return keys
    return keys
