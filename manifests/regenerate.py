"""Regenerate the golden manifests: a tiny fixed dataset refined with a tiny fixed refiner.

    python manifests/regenerate.py            # rewrites manifests/golden/
    python manifests/regenerate.py --check    # regenerates elsewhere and diffs against golden

The dataset is built from a seeded generator: 2 shards of 8x8 grey digits-like images
with labels, one deliberately corrupt PNG (so a failure row is part of the record).
The refiner file is committed next to this script (`tiny_refiner.safetensors`) so its
content hash is the same everywhere; the script creates it only when it is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import manifest, shards  # noqa: E402
from pipeline.data.output import write_labelled_shard  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden")
REFINER = os.path.join(HERE, "tiny_refiner.safetensors")
# Compared exactly across machines: input image hashes come from fixed arrays through
# the pinned PNG encoder. Refined-image hashes are not: convolutions may round
# differently on other CPUs/BLAS builds and flip a pixel by one level.
REPRODUCIBLE_HASHES = ("input_sha256",)


def make_refiner(path: str = REFINER) -> str:
    import torch

    from pipeline.models import Refiner, RefinerSpec
    from pipeline.refiner_file import save_refiner

    torch.manual_seed(0)
    save_refiner(path, Refiner(RefinerSpec(kernel=3, features=4, blocks=1)), "tiny", 8, 8, 8)
    return path


def make_dataset(folder: str) -> None:
    rng = np.random.default_rng(2017)
    for index in range(2):
        samples = []
        for i in range(6):
            digit = int(rng.integers(0, 10))
            image = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            samples.append((f"g{index}_{i:02d}", image, {"digit": digit, "scale": round(float(rng.uniform(0.5, 1.5)), 4)}))
        write_labelled_shard(folder, shards.shard_name("golden", index), samples)
    # One corrupt PNG in a third shard beside a good sample.
    good = shards.encode_png(rng.integers(0, 256, (8, 8), dtype=np.uint8))
    members = [
        ("g2_00", {"png": good, "json": shards.encode_labels({"digit": 3, "scale": 1.0})}),
        ("g2_01", {"png": good[:30], "json": shards.encode_labels({"digit": 4, "scale": 1.0})}),
    ]
    shards.write_shard(os.path.join(folder, shards.shard_name("golden", 2)), members)


def regenerate(workdir: str, refiner: str = REFINER) -> str:
    """Build the dataset in `workdir`, refine it; returns the refined folder."""
    from pipeline.refine import refine_dataset

    if not os.path.exists(refiner):
        make_refiner(refiner)
    make_dataset(os.path.join(workdir, "in"))
    out = os.path.join(workdir, "out")
    refine_dataset(os.path.join(workdir, "in"), out, refiner, batch_size=4, allow_failures=True)
    return out


def save_golden(refined: str, golden: str = GOLDEN) -> None:
    if os.path.isdir(golden):
        shutil.rmtree(golden)
    os.makedirs(golden)
    for path in manifest.shard_manifest_paths(refined) + [os.path.join(refined, manifest.DATASET_MANIFEST)]:
        shutil.copy(path, golden)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="diff a fresh run against the golden files")
    args = parser.parse_args()
    from pipeline.refine.diff import diff_manifests

    with tempfile.TemporaryDirectory() as workdir:
        refined = regenerate(workdir)
        if args.check:
            result = diff_manifests(GOLDEN, refined, check_hashes=True, hash_columns=REPRODUCIBLE_HASHES)
            print(result.to_text())
            return 0 if result.ok else 1
        save_golden(refined)
    print(f"golden manifests written to {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
