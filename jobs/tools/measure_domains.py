"""Does refinement help, or at least never hurt, on several real domains? Prints a table.

    python jobs/tools/measure_domains.py --out DIR [--variants none thin ...] [--preset digits]
        [--set key=value ...] [--seeds 3] [--local]

For each MNIST variant (`simgan import-real mnist --variant V`: the same real digits
drawn thick, thin, faded, noisy, grainy or inverted) it runs the user's commands one after
another: import the real digits, `simgan train` the synthetic digits against that
domain's unlabelled split, `refine-dataset`, and `simgan evaluate` on the domain's
labelled test split (3 downstream seeds). When `simgan train` refuses to export a
usable refiner, the user keeps the raw synthetic data: the row then evaluates the raw
data against itself and says so. Every command is printed before it runs, and the
table (Markdown) is printed at the end and written to DIR/domains.md.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from pipeline.data.domains import VARIANTS  # noqa: E402
from pipeline.training.job import RETRIES  # noqa: E402


def run(command: list[str], log) -> int:
    line = " ".join(shlex.quote(part) for part in command)
    print(f"$ {line}", flush=True)
    log.write(f"$ {line}\n")
    log.flush()
    return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode


def cell(summary: dict, scale: float = 100.0) -> str:
    return f"{summary['mean'] * scale:.1f} ± {summary['std'] * scale:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--set", dest="pairs", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--count", type=int, default=10000, help="synthetic digits")
    parser.add_argument("--local", action="store_true", help="train without Ray (same step)")
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    synthetic = os.path.join(out, "synthetic")
    log = open(os.path.join(out, "commands.log"), "a")
    if not os.path.exists(os.path.join(synthetic, "summary.json")):
        run(["simgan", "simulate", "digits", "--count", str(args.count), "--out", synthetic, "--seed", "0",
             "--overwrite"], log)
    rows = []
    for variant in args.variants:
        began = time.time()
        home = os.path.join(out, variant)
        real = os.path.join(home, "real")
        run(["simgan", "import-real", "mnist", "--out", real, "--variant", variant, "--overwrite"], log)
        train = ["simgan", "train", "--synthetic", synthetic, "--real", os.path.join(real, "unlabelled"),
                 "--out", os.path.join(home, "run"), "--preset", args.preset]
        for pair in args.pairs:
            train += ["--set", pair]
        if args.local:
            train.append("--local")
        refused = run(train, log) != 0
        refined = synthetic
        if not refused:
            refined = os.path.join(home, "refined")
            if run(["refine-dataset", "--in", synthetic, "--out", refined, "--refiner",
                    os.path.join(home, "run", "refiner.safetensors"), "--overwrite"], log) != 0:
                sys.exit(f"refine-dataset failed for {variant}; see {log.name}")
        evaluation = os.path.join(home, "evaluation")
        if run(["simgan", "evaluate", "--task", "digits", "--synthetic", synthetic, "--refined", refined,
                "--real-train", os.path.join(real, "train"), "--real-test", os.path.join(real, "test"),
                "--seeds", str(args.seeds), "--out", evaluation], log) != 0:
            sys.exit(f"simgan evaluate failed for {variant}; see {log.name}")
        with open(os.path.join(evaluation, "results.json")) as handle:
            results = json.load(handle)
        # A run refused for its labels trains again (RETRIES, in turn): the last run made counts.
        verdict, made = {}, ""
        for folder, what in [("", ""), *((folder, f" ({folder})") for folder, _, _ in RETRIES)]:
            path = os.path.join(home, "run", folder, "selection.json")
            if os.path.exists(path):
                verdict, made = json.load(open(path)), what
        d, t, p = results["downstream"], results["two_sample"], results["label_preservation"]
        rows.append({
            "variant": variant,
            "refused": refused,
            "synthetic": cell(d["synthetic"]["accuracy"]),
            "refined": "refused (raw kept)" if refused else cell(d["refined"]["accuracy"]),
            "gain": 0.0 if refused else 100 * (d["refined"]["accuracy"]["mean"] - d["synthetic"]["accuracy"]["mean"]),
            "real": cell(d["real"]["accuracy"]),
            "two_sample": f"{cell(t['synthetic']['accuracy'])} -> " + ("-" if refused else cell(t["refined"]["accuracy"])),
            "preservation": f"{cell(p['synthetic']['agreement'])} -> " + ("-" if refused else cell(p["refined"]["agreement"])),
            "step": f"{verdict.get('step')}{made}",
            "minutes": round((time.time() - began) / 60, 1),
        })
        print(f"[domains] {variant}: {rows[-1]}", flush=True)
    table = ["| real domain (MNIST variant) | raw synthetic (%) | refined (%) | gain (points) | real-trained (%) "
             "| two-sample real vs source (%) | label preservation (%) | exported step |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['variant']} | {r['synthetic']} | {r['refined']} | {r['gain']:+.1f} | {r['real']} | "
                     f"{r['two_sample']} | {r['preservation']} | {r['step'] if not r['refused'] else 'refused'} |")
    text = "\n".join(table)
    print(text)
    with open(os.path.join(out, "domains.md"), "w") as handle:
        handle.write(text + "\n")
    with open(os.path.join(out, "domains.json"), "w") as handle:
        json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
