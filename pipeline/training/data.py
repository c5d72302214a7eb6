"""Training input: images from shard folders, with every unusable sample recorded.

Reading goes through pipeline.shards (tar layout, PNG and label decoding). A sample
that cannot be used is never dropped silently: it becomes a Problem naming the shard,
key and reason, and the run writes all of them to RUN_DIR/data_problems.jsonl.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from pipeline import shards
from pipeline.errors import UserError

PROBLEMS_FILE = "data_problems.jsonl"


@dataclass(frozen=True)
class Geometry:
    height: int
    width: int
    channels: int
    bit_depth: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


def iter_images(
    shard_path: str, geometry: Geometry | None = None
) -> Iterator[tuple[str, np.ndarray, Geometry, dict] | shards.Problem]:
    """(key, CxHxW float32 in [0, 1], geometry as stored, labels) per usable sample of
    one shard, Problems otherwise.

    With `geometry`, a sample of another size, channel count or bit depth is a Problem.
    """
    for item in shards.iter_shard(shard_path):
        if isinstance(item, shards.Problem):
            yield item
            continue
        try:
            sample = shards.decode_sample(item)
        except shards.SampleError as exc:
            yield shards.Problem(item.shard, item.key, exc.kind, exc.message)
            continue
        found = Geometry(*shards.image_geometry(sample.image))
        if geometry is not None and found != geometry:
            yield shards.Problem(
                item.shard, item.key, shards.WRONG_SHAPE,
                f"image is {found.height}x{found.width}x{found.channels} {found.bit_depth}-bit, "
                f"the folder's first image is {geometry.height}x{geometry.width}x{geometry.channels} {geometry.bit_depth}-bit",
            )
            continue
        yield item.key, shards.to_float(sample.image), found, sample.labels


def first_geometry(paths: list[str], role: str) -> Geometry:
    """The geometry of the first usable sample: the one every other sample must share."""
    for path in paths:
        for item in iter_images(path):
            if not isinstance(item, shards.Problem):
                return item[2]
    raise UserError(f"the {role} shards hold no usable image")


@dataclass
class ImageSet:
    images: np.ndarray  # N x C x H x W float32, in (shard, key) order
    keys: list[str]
    geometry: Geometry
    problems: list[shards.Problem]
    labels: list[dict]


def read_folder(folder: str, role: str, geometry: Geometry | None = None) -> ImageSet:
    """Every usable image of a shard folder, in memory (the local loop's input)."""
    paths = shards.require_shards(folder, role)
    geometry = geometry or first_geometry(paths, role)
    images, keys, problems, labels = [], [], [], []
    for path in paths:
        for item in iter_images(path, geometry):
            if isinstance(item, shards.Problem):
                problems.append(item)
            else:
                keys.append(f"{os.path.basename(path)}/{item[0]}")
                images.append(item[1])
                labels.append(item[3])
    if not images:
        raise UserError(f"the {role} folder {folder} has no usable image ({len(problems)} problems)")
    # Sorted by "shard/key": the order the Ray workers rebuild, whatever order blocks arrive in.
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return ImageSet(np.stack([images[i] for i in order]), [keys[i] for i in order], geometry, problems,
                    [labels[i] for i in order])


def first_images(folder: str, role: str, count: int, geometry: Geometry) -> np.ndarray:
    """Up to `count` usable images from the first shards, in stored order (a small sample)."""
    images = []
    for path in shards.require_shards(folder, role):
        for item in iter_images(path, geometry):
            if not isinstance(item, shards.Problem):
                images.append(item[1])
                if len(images) == count:
                    return np.stack(images)
    if not images:
        raise UserError(f"the {role} folder {folder} has no usable image")
    return np.stack(images)


def record_problems(run_dir: str, role: str, problems: list[shards.Problem]) -> None:
    """Append problems to RUN_DIR/data_problems.jsonl and say how many on the terminal."""
    if not problems:
        return
    with open(os.path.join(run_dir, PROBLEMS_FILE), "a") as handle:
        for p in problems:
            handle.write(json.dumps({"input": role, "shard": p.shard, "key": p.key, "kind": p.kind, "message": p.message}) + "\n")
    print(f"{role}: {len(problems)} unusable samples skipped, listed in {os.path.join(run_dir, PROBLEMS_FILE)}; first: {problems[0]}")


def check_compatible(synthetic: Geometry, real: Geometry) -> None:
    """D compares refined and real patch maps, so both sides need one size and channel count."""
    if synthetic.shape != real.shape:
        raise UserError(
            f"synthetic images are {synthetic.height}x{synthetic.width}x{synthetic.channels}, "
            f"real images {real.height}x{real.width}x{real.channels}: they must match"
        )
