"""Benchmark: the CPU cost per image of each CPU stage of refine-dataset, on one core.

    python jobs/tools/benchmark_stages.py --images-of eyes --images 4000

On a GPU node these stages, not the refiner, set the pace: a node with C CPUs can
refine at most about C / (sum of the three) images per second, whatever the GPU. Runs
each stage's own function in this one process, over shards written as
`benchmark_refine.py` writes them (a pool of rendered images cycled with unique keys):

- the header and label pass before refining (`shards.survey_shard`);
- read + decode (`refine.read.read_shard`: tar, PNG decode, labels, hashes, rows);
- encode + write (`refine.write.write_shards`: PNG encode, tar, Parquet manifest, marker).

Prints CPU seconds per image (process time, so other load on the machine matters less
than for wall time) and the ceiling they set on 16 CPUs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmark_refine import SIMULATORS, make_inputs, render_pool  # noqa: E402

from pipeline import shards  # noqa: E402
from pipeline.reading import Geometry  # noqa: E402
from pipeline.refine.read import read_shard  # noqa: E402
from pipeline.refine.write import write_shards  # noqa: E402


def cpu_ms_per_image(function, items: list, images: int) -> float:
    start = time.process_time()
    results = [function(item) for item in items]
    spent = time.process_time() - start
    del results
    return spent * 1000 / images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--images-of", choices=sorted(SIMULATORS), default="eyes")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="bench-stages-")
    try:
        in_dir, out_dir = os.path.join(workdir, "in"), os.path.join(workdir, "out")
        os.makedirs(out_dir)
        make_inputs(in_dir, args.images, args.per_shard, args.images_of)
        paths = shards.list_shards(in_dir)
        geometry = Geometry.of(render_pool(args.images_of, 1, 0)[0][0])
        survey = cpu_ms_per_image(shards.survey_shard, paths, args.images)
        read = cpu_ms_per_image(lambda path: read_shard(path, geometry), paths, args.images)
        blocks = [read_shard(path, geometry) for path in paths]
        write = cpu_ms_per_image(lambda block: write_shards(block, out_dir, "benchmark", {}), blocks, args.images)
        total = survey + read + write
        print(f"{args.images} {args.images_of} images ({geometry}) in {len(paths)} shards, one core, CPU ms/image:")
        print(f"  header and label pass {survey:.3f}, read + decode {read:.3f}, encode + write {write:.3f}; "
              f"sum {total:.3f}")
        print(f"ceiling these set on 16 CPUs: {16_000 / total:,.0f} images/s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
