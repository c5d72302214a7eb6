"""The CPU path's one stage: read, refine and write whole shards in one process.

On CPU the refiner competes with decoding and encoding for the same cores, so handing
decoded images from a read process to a refiner process to a write process only adds
copies, serialisation and scheduling around the same work. `ShardWorker` runs the three
steps of the split path (`read.read_shards`, `stage.RefineStage`, `write.write_shards`)
back to back on a group of shards, so the bytes it writes are the split path's, and
only each shard's stats leave the process. Like `RefineStage` it knows nothing of Ray
and pickles by its arguments. The GPU path keeps the split stages, so that decoding and
encoding never take the GPU actor's one CPU.
"""

from __future__ import annotations

import json

import numpy as np

from pipeline import shards
from pipeline.reading import Geometry
from pipeline.refine.read import read_shards
from pipeline.refine.stage import RefineStage
from pipeline.refine.write import write_shards


class ShardWorker:
    """Refines every shard of a group (`batch["paths"]`: a JSON list) into `out_dir`.

    `duplicates`: shard name -> {key: the shard that keeps it}, decided before the run.
    Returns one row of stats (JSON) per shard, as `write_shards` does.
    """

    def __init__(self, refiner_path: str, geometry: Geometry, limits: shards.Limits, out_dir: str,
                 refiner_hash: str, duplicates: dict[str, dict[str, str]], batch_size: int = 256,
                 threads: int | None = 1):
        self.args = (refiner_path, geometry, limits, out_dir, refiner_hash, duplicates, batch_size, threads)
        self.geometry, self.limits = geometry, limits
        self.writing = {"out_dir": out_dir, "refiner_hash": refiner_hash, "duplicates": duplicates}
        self.stage = RefineStage(refiner_path, "cpu", batch_size, threads)

    def __reduce__(self):
        return (ShardWorker, self.args)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stats = []
        for paths in batch["paths"]:
            for columns in read_shards(json.loads(str(paths)), self.geometry, self.limits):
                stats.extend(write_shards(self.stage(columns), **self.writing)["stats"])
        return {"stats": np.array(stats, dtype=object)}
