"""Is refined data more realistic than raw synthetic data? Prints two accuracies.

    python jobs/tools/measure_realism.py --refiner RUN_DIR/refiner.safetensors \
        --synthetic SYNTHETIC_DIR --real REAL_DIR [--limit 2000] [--seed 0]

A small classifier is trained fresh to tell real from raw synthetic images, and another
to tell real from the same synthetic images refined; each is scored on held-out
images. Use synthetic and real folders the refiner was not trained on.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from pipeline.models import refine_array  # noqa: E402
from pipeline.refiner_file import load_refiner  # noqa: E402
from pipeline.training.data import read_folder  # noqa: E402
from pipeline.two_sample import two_sample_accuracy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refiner", required=True)
    parser.add_argument("--synthetic", required=True)
    parser.add_argument("--real", required=True)
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    real = read_folder(args.real, "real").images[: args.limit]
    synthetic = read_folder(args.synthetic, "synthetic").images[: args.limit]
    refiner, info = load_refiner(args.refiner)
    refined = refine_array(refiner, synthetic)
    raw_accuracy = two_sample_accuracy(real, synthetic, args.seed)
    refined_accuracy = two_sample_accuracy(real, refined, args.seed)
    print(f"refiner {info.content_hash[:12]} ({info.preset}), {len(real)} real, {len(synthetic)} synthetic images")
    print(f"real vs raw synthetic: held-out accuracy {raw_accuracy:.3f}")
    print(f"real vs refined:       held-out accuracy {refined_accuracy:.3f}")
    print(f"mean |refined - synthetic| = {np.abs(refined - synthetic).mean():.4f}; took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
