"""Benchmark: the same images as many tiny shards against a few large ones.

    python jobs/tools/benchmark_tiny_shards.py --images 2000 --many 2000 --few 16

Writes the same synthetic 28x28 digits twice (once as `--many` shards, once as `--few`),
refines both with `refine_dataset` on one local Ray started beforehand (its start-up is
not timed), and prints both wall times and their ratio. Per-shard costs (scheduling a
read task, writing a tar, a manifest and a marker) are what the ratio measures; the
refiner is the `digits` preset with fixed random weights.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.data import digits  # noqa: E402
from pipeline.data.output import write_labelled_shard  # noqa: E402
from pipeline.models import Refiner, refiner_preset  # noqa: E402
from pipeline.refiner_file import save_refiner  # noqa: E402


def make_inputs(folder: str, images: list, shard_count: int) -> None:
    per_shard = -(-len(images) // shard_count)
    for index, start in enumerate(range(0, len(images), per_shard)):
        samples = [(f"tiny-{i:08d}", *images[i]) for i in range(start, min(start + per_shard, len(images)))]
        write_labelled_shard(folder, f"tiny-{index:06d}.tar", samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--many", type=int, default=2000, help="shard count of the tiny-shard layout")
    parser.add_argument("--few", type=int, default=16, help="shard count of the large-shard layout")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=1, help="runs per layout; the fastest is kept")
    args = parser.parse_args()

    from pipeline import console
    from pipeline.ray_session import ray_session
    from pipeline.refine import refine_dataset

    workdir = tempfile.mkdtemp(prefix="bench-tiny-")
    try:
        rng = np.random.default_rng(0)
        fonts = digits.usable_fonts()
        images = [digits.sample(rng, fonts, "antialiased") for _ in range(args.images)]
        refiner_path = os.path.join(workdir, "refiner.safetensors")
        torch.manual_seed(0)
        save_refiner(refiner_path, Refiner(refiner_preset("digits")), "digits", 28, 28, 8)
        layouts = {"few": args.few, "many": args.many}
        for name, count in layouts.items():
            make_inputs(os.path.join(workdir, f"in-{name}"), images, count)

        walls = {}
        with ray_session(), console.quiet("pipeline.refine"):
            for name, count in layouts.items():
                best = None
                for attempt in range(args.repeat):
                    out = os.path.join(workdir, f"out-{name}-{attempt}")
                    started = time.perf_counter()
                    summary = refine_dataset(os.path.join(workdir, f"in-{name}"), out, refiner_path,
                                             batch_size=args.batch_size)
                    wall = time.perf_counter() - started
                    assert summary["ok"] == args.images, summary
                    best = wall if best is None else min(best, wall)
                    print(f"{count} shards: {summary['ok']} images in {wall:.1f} s", flush=True)
                walls[name] = best
        print(f"ratio {args.many} shards / {args.few} shards: {walls['many'] / walls['few']:.2f} "
              f"({walls['many']:.1f} s / {walls['few']:.1f} s)")
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min) at the end")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
