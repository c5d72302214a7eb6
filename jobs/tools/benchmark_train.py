"""Step time of the Ray Train path against the plain local loop: same model, batch,
data and machine, one run each. Prints seconds per step and their ratio.

    python jobs/tools/benchmark_train.py --synthetic DIR --real DIR [--steps 30] [--preset digits]

Only adversarial iterations are timed (no pre-training), from the second step to the
last, using the per-step timestamps the runs write to metrics.jsonl; start-up (Ray,
data loading) is reported separately as end-to-end wall time.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from pipeline.training import train  # noqa: E402


def seconds_per_step(run_dir: str) -> float:
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        elapsed = [json.loads(line)["elapsed_s"] for line in handle if line.strip()]
    return (elapsed[-1] - elapsed[0]) / (len(elapsed) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description="Ray Train vs local loop step time")
    parser.add_argument("--synthetic", required=True)
    parser.add_argument("--real", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--preset", default="digits")
    args = parser.parse_args()
    overrides = {
        "pretrain_refiner_steps": 0, "pretrain_discriminator_steps": 0, "iterations": args.steps,
        "sample_every": 10**6, "checkpoint_every": 10**6, "log_every": 10,
    }
    results = {}
    with tempfile.TemporaryDirectory() as root:
        for name, local in (("local", True), ("ray", False)):
            run_dir = os.path.join(root, name)
            started = time.perf_counter()
            train(args.synthetic, args.real, run_dir, preset=args.preset, overrides=overrides, local=local)
            results[name] = (seconds_per_step(run_dir), time.perf_counter() - started)
    for name, (step, wall) in results.items():
        print(f"{name:5s}: {step:.3f} s/step over {args.steps} adversarial iterations, {wall:.1f} s end to end")
    print(f"ray/local step-time ratio: {results['ray'][0] / results['local'][0]:.3f}")


if __name__ == "__main__":
    main()
