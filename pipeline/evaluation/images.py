"""Load a shard folder into arrays for evaluation, keeping a record of what was unusable.

Evaluation needs whole datasets in memory (they are small: thousands of images), so
this reads every shard once through `pipeline.reading` and returns float images, labels
and keys. Samples that cannot be used are listed as problems (shard, key, why) and
reported with the results, never dropped silently.
"""

from __future__ import annotations

import numpy as np

from pipeline import reading, shards
from pipeline.errors import UserError
from pipeline.reading import ImageSet


def load_folder(folder: str, require: str | None = None) -> ImageSet:
    """Every usable sample of the shards in `folder`, in shard order.

    `require` names a label every sample must carry (e.g. "class"); a sample without it
    is recorded as a problem. Images of a size or channel count other than the first
    one's are recorded too, since one estimator cannot take both; bit depth may differ,
    as the estimators see floats in [0, 1].
    """
    images = reading.load_images(folder, label=require, match_depth=False)
    if not len(images):
        problems = images.problems
        detail = f" ({len(problems)} problems, first: {problems[0]})" if problems else ""
        raise UserError(f"{folder} holds no usable samples{detail}")
    return images


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
    if not wanted:
        return found
    # Only the wanted samples are decoded; one that does not decode is left out (the
    # evaluation's problem list already names it).
    chosen = (item for item in reading.stored(shards.list_shards(folder))
              if isinstance(item, shards.RawSample) and item.key in wanted)
    for item in reading.decode(chosen):
        if isinstance(item, shards.Sample) and item.key not in found:
            found[item.key] = item.image
            if len(found) == len(wanted):
                break
    return found


def first_keys(folder: str, count: int) -> list[str]:
    """The first `count` well-formed keys of a folder, in shard order."""
    keys: list[str] = []
    for item in reading.stored(shards.list_shards(folder)):
        if isinstance(item, shards.RawSample):
            keys.append(item.key)
            if len(keys) == count:
                break
    return keys
