"""Shared builders for the refinement tests: a tiny fixed refiner, tiny labelled shards,
and hand-made bad tars."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import torch

from pipeline import manifest
from pipeline.data.output import write_labelled_shard
from pipeline.models import Refiner, RefinerSpec
from pipeline.refine.write import NODES
from pipeline.refiner_file import save_refiner

SIZE = 8


def make_refiner(path: str, channels: int = 1, size: int = SIZE, bit_depth: int = 8, seed: int = 0,
                 features: int = 4, blocks: int = 1) -> str:
    """The tiny fixed refiner (more `features` and `blocks` make it slower); its output
    layer is scaled up so it visibly changes images."""
    torch.manual_seed(seed)
    refiner = Refiner(RefinerSpec(kernel=3, features=features, blocks=blocks, channels=channels))
    with torch.no_grad():
        refiner.conv_out.weight.mul_(300.0)
    save_refiner(path, refiner, "tiny", size, size, bit_depth)
    return path


def image(rng, channels: int = 1, size: int = SIZE, dtype=np.uint8) -> np.ndarray:
    shape = (size, size) if channels == 1 else (size, size, channels)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def samples(rng, prefix: str, count: int, channels: int = 1) -> list:
    return [
        (f"{prefix}_{i}", image(rng, channels), {"digit": i % 10, "source": prefix, "pose": [i, -i]})
        for i in range(count)
    ]


def write_dataset(folder: str, shard_count: int = 3, per_shard: int = 20, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    names = []
    for s in range(shard_count):
        name = f"data-{s:06d}.tar"
        write_labelled_shard(folder, name, samples(rng, f"s{s}", per_shard))
        names.append(name)
    return names


def raw_tar(path: str, members: list[tuple[str, bytes]]) -> str:
    """A tar with exactly these members (names and bytes), bypassing every check."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def run_outputs(folder) -> dict[str, bytes]:
    """Every file a run writes that must not depend on where or how often Ray ran the
    work: tars, manifests, and stats files without their `nodes` field."""
    found = {}
    for name in sorted(os.listdir(folder)):
        data = open(os.path.join(folder, name), "rb").read()
        if name == manifest.SUMMARY:
            continue  # wall times
        if name.endswith(manifest.STATS_SUFFIX):
            stats = json.loads(data)
            assert set(stats.pop(NODES)) == {"refined", "written"}
            data = json.dumps(stats, sort_keys=True).encode()
        found[name] = data
    return found
