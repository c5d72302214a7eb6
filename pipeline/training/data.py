"""Training input: images from shard folders, with every unusable sample recorded.

Reading goes through pipeline.reading (decoding, one geometry per folder). A sample
that cannot be used is never dropped silently: it becomes a Problem naming the shard,
key and reason, and the run writes all of them to RUN_DIR/data_problems.jsonl.
"""

from __future__ import annotations

import json
import os

from pipeline import console, reading, shards
from pipeline.errors import UserError
from pipeline.reading import Geometry, ImageSet

log = console.logger("pipeline.training")

PROBLEMS_FILE = "data_problems.jsonl"


def first_geometry(paths: list[str], role: str) -> Geometry:
    """The geometry of the first usable sample: the one every other sample must share."""
    for item in reading.decode(reading.stored(paths)):
        if isinstance(item, shards.Sample):
            return Geometry.of(item.image)
    raise UserError(f"the {role} shards hold no usable image")


def read_folder(folder: str, role: str) -> ImageSet:
    """Every usable image of a shard folder, in memory (the local loop's input), in
    "shard/key" order: the order the Ray workers rebuild, whatever order blocks arrive in."""
    found = reading.load_images(folder, role)
    if not len(found):
        raise UserError(f"the {role} shards hold no usable image")
    return found.by_name()


def record_problems(run_dir: str, role: str, problems: list[shards.Problem]) -> None:
    """Append problems to RUN_DIR/data_problems.jsonl and say how many on the terminal."""
    if not problems:
        return
    with open(os.path.join(run_dir, PROBLEMS_FILE), "a") as handle:
        for p in problems:
            handle.write(json.dumps({"input": role, "shard": p.shard, "key": p.key, "kind": p.kind, "message": p.message}) + "\n")
    log.info(f"{role}: {len(problems)} unusable samples skipped, listed in {os.path.join(run_dir, PROBLEMS_FILE)}; "
             f"first: {problems[0]}")


def check_compatible(synthetic: Geometry, real: Geometry) -> None:
    """D compares refined and real patch maps, so both sides need one size and channel count."""
    if synthetic.shape != real.shape:
        raise UserError(f"synthetic images are {synthetic}, real images {real}: they must match in size and channels")
