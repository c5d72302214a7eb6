"""One reading path: shard samples through small generator stages.

Every reader of shards (refine-dataset, training, evaluation, validate-shards) goes
through these stages, so decoding, the geometry check and the label check are written
once and report the same Problems in the same words. As in a WebDataset pipeline, each
stage takes an iterable and yields one item per item it gets: a sample passes on or
becomes a Problem naming shard, key and reason; a Problem passes on untouched, in its
place. `samples` composes them: stored -> decode -> require_label -> check_geometry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from pipeline import shards
from pipeline.shards import DEFAULT_LIMITS, Limits, Problem, RawSample, Sample

# What a geometry check compares against when no geometry is given.
FIRST_IMAGE = "the folder's first image"


@dataclass(frozen=True)
class Geometry:
    """What a stored image is: its size, channel count and bits per channel."""

    height: int
    width: int
    channels: int
    bit_depth: int

    @classmethod
    def of(cls, image: np.ndarray) -> Geometry:
        return cls(*shards.image_geometry(image))

    @property
    def shape(self) -> tuple[int, int, int]:
        """C x H x W: the layout of `shards.to_float` and of the networks."""
        return (self.channels, self.height, self.width)

    def blank(self) -> np.ndarray:
        """A zero image of this geometry, as decoded images are stored."""
        shape = (self.height, self.width) if self.channels == 1 else (self.height, self.width, self.channels)
        return np.zeros(shape, np.uint16 if self.bit_depth == 16 else np.uint8)

    def __str__(self) -> str:
        return f"{self.height}x{self.width}x{self.channels} {self.bit_depth}-bit"


def stored(paths: Iterable[str], limits: Limits = DEFAULT_LIMITS) -> Iterator[RawSample | Problem]:
    """The samples of the shards at `paths` as stored, in order, with the problems
    `shards.iter_shard` finds in each."""
    for path in paths:
        yield from shards.iter_shard(path, limits)


def decode(items: Iterable[RawSample | Problem], limits: Limits = DEFAULT_LIMITS) -> Iterator[Sample | Problem]:
    """Stored samples decoded (image and labels); one that does not decode becomes a Problem."""
    for item in items:
        if isinstance(item, RawSample):
            try:
                item = shards.decode_sample(item, limits)
            except shards.SampleError as exc:
                item = Problem(item.shard, item.key, exc.kind, exc.message)
        yield item


def geometry_problem(shard: str, key: str, found: Geometry, expected: Geometry, against: str) -> Problem:
    """The WRONG_SHAPE problem of an image of `found` geometry where `against` (a
    description of where `expected` comes from) sets another."""
    return Problem(shard, key, shards.WRONG_SHAPE, f"image is {found}, {against} is {expected}")


def check_geometry(
    items: Iterable[Sample | Problem],
    expected: Geometry | None = None,
    against: str = FIRST_IMAGE,
    match_depth: bool = True,
) -> Iterator[Sample | Problem]:
    """Samples of the `expected` geometry; one of another becomes a WRONG_SHAPE Problem.

    With no `expected`, the first sample's geometry is expected of the rest: one network
    takes one size. `match_depth=False` compares size and channels only, for readers
    that use the images as floats in [0, 1], where bit depth no longer shows.
    """
    for item in items:
        if isinstance(item, Sample):
            found = Geometry.of(item.image)
            if expected is None:
                expected = found
            elif found.shape != expected.shape or (match_depth and found.bit_depth != expected.bit_depth):
                item = geometry_problem(item.shard, item.key, found, expected, against)
        yield item


def require_label(items: Iterable[Sample | Problem], name: str) -> Iterator[Sample | Problem]:
    """Samples that carry the label `name`; one without it becomes an INVALID_LABELS Problem."""
    for item in items:
        if isinstance(item, Sample) and name not in item.labels:
            item = Problem(item.shard, item.key, shards.INVALID_LABELS, f"no {name!r} label")
        yield item


def samples(
    paths: Iterable[str],
    limits: Limits = DEFAULT_LIMITS,
    label: str | None = None,
    geometry: Geometry | None = None,
    match_depth: bool = True,
) -> Iterator[Sample | Problem]:
    """Decoded samples of the shards at `paths` that carry `label` (when named) and have
    one geometry (`geometry`, else the first sample's), with a Problem for every other."""
    items = decode(stored(paths, limits), limits)
    if label is not None:
        items = require_label(items, label)
    return check_geometry(items, geometry, match_depth=match_depth)


@dataclass
class ImageSet:
    """The usable images of a shard folder in memory: N x C x H x W float32 in [0, 1]
    with their labels, keys and shards, and the problems of the samples left out."""

    folder: str
    images: np.ndarray
    labels: list[dict]
    keys: list[str]
    shards: list[str]
    geometry: Geometry | None  # the first image's; None when there is no image
    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def names(self) -> list[str]:
        """"shard/key" of every image: keys are unique per shard only."""
        return [f"{shard}/{key}" for shard, key in zip(self.shards, self.keys)]

    def by_name(self) -> ImageSet:
        """The same images sorted by "shard/key", an order that does not depend on the
        order samples were read in."""
        order = sorted(range(len(self)), key=self.names.__getitem__)
        return ImageSet(self.folder, self.images[order], [self.labels[i] for i in order],
                        [self.keys[i] for i in order], [self.shards[i] for i in order], self.geometry, self.problems)

    def problem_records(self) -> list[dict]:
        return [{"shard": p.shard, "key": p.key, "kind": p.kind, "message": p.message} for p in self.problems]


def load_images(folder: str, role: str = "", label: str | None = None, match_depth: bool = True) -> ImageSet:
    """Every usable sample of the shards in `folder`, in stored order (the set is empty
    when none is usable; the caller says what that means for it). `role` names the
    folder in errors about the folder itself; `label` and `match_depth` are as in
    `samples`."""
    images, labels, keys, names, problems = [], [], [], [], []
    geometry = None
    for item in samples(shards.require_shards(folder, role), label=label, match_depth=match_depth):
        if isinstance(item, Problem):
            problems.append(item)
            continue
        geometry = geometry or Geometry.of(item.image)
        images.append(shards.to_float(item.image))
        labels.append(item.labels)
        keys.append(item.key)
        names.append(item.shard)
    return ImageSet(folder, np.stack(images) if images else np.zeros((0, 0, 0, 0), np.float32), labels, keys,
                    names, geometry, problems)
