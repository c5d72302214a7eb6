"""`simgan evaluate`: the paper's measurement of a refiner.

The same downstream estimator (same seeds, steps, batch order, augmentation) is
trained on (a) raw synthetic shards, (b) refined shards and, when given, (c) labelled
real training shards; each is tested on real labelled held-out shards; this repeats
over several seeds and reports mean and spread. Realism and label metrics come along.
Results go to `OUT/results.json`.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Callable

import numpy as np

from pipeline.errors import UserError
from pipeline.evaluation import downstream, images, metrics, realism
from pipeline.files import write_json
from pipeline.reading import ImageSet
from pipeline.two_sample import TWO_SAMPLE_EPOCHS, two_sample_accuracy
from pipeline.version import __version__

RESULTS = "results.json"
SYNTHETIC, REFINED, REAL = "synthetic", "refined", "real"
LABEL = {"digits": "class", "gaze": "gaze"}
# The score each task is judged by first, and whether higher is better.
HEADLINE = {"digits": ("accuracy", True), "gaze": ("within_7", True)}


def versions() -> dict:
    import ray
    import torch
    import webdataset

    return {
        "simgan-pipeline": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "ray": ray.__version__,
        "webdataset": webdataset.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def targets(task: str, data: ImageSet) -> np.ndarray:
    return images.class_labels(data) if task == "digits" else images.gaze_labels(data)


def score(task: str, model, test: ImageSet, truth: np.ndarray) -> dict[str, float]:
    """digits: accuracy; gaze: mean angle error and the share within d degrees, d = 5..25."""
    outputs = downstream.predict(model, test.images)
    if task == "digits":
        return {"accuracy": metrics.accuracy(outputs, truth)}
    errors = metrics.angle_errors(outputs, truth)
    scores = {"mean_angle_error": float(errors.mean())}
    scores.update({f"within_{d}": share for d, share in metrics.share_within(errors).items()})
    return scores


def _summaries(per_seed: list[dict[str, float]]) -> dict:
    return {name: metrics.summarise([scores[name] for scores in per_seed]) for name in per_seed[0]}


def evaluate(
    task: str,
    synthetic_dir: str,
    refined_dir: str,
    real_test_dir: str,
    out_dir: str,
    real_train_dir: str | None = None,
    seeds: int = 3,
    settings: downstream.TrainSettings | None = None,
    two_sample_epochs: int = TWO_SAMPLE_EPOCHS,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the evaluation and write `out_dir/results.json`; returns the results."""
    if task not in LABEL:
        raise UserError(f"unknown task {task!r}; choose from {sorted(LABEL)}")
    if seeds < 1:
        raise UserError("--seeds must be at least 1")
    settings = settings or downstream.TrainSettings()
    started = time.time()
    label = LABEL[task]
    folders = {SYNTHETIC: synthetic_dir, REFINED: refined_dir}
    if real_train_dir:
        folders[REAL] = real_train_dir
    sources = {name: images.load_folder(folder, require=label) for name, folder in folders.items()}
    test = images.load_folder(real_test_dir, require=label)
    shapes = {name: data.shape for name, data in {**sources, "real-test": test}.items()}
    if len(set(shapes.values())) != 1:
        raise UserError(f"the folders hold images of different shapes: {shapes}")
    truth = targets(task, test)
    problems = {name: data.problem_records() for name, data in {**sources, "real-test": test}.items()}
    for name, records in problems.items():
        if records:
            log(f"[evaluate] {name}: {len(records)} unusable samples left out (listed in {RESULTS}), "
                f"first: {records[0]['shard']} key {records[0]['key']!r}: {records[0]['message']}")
    missing = sorted(set(sources[SYNTHETIC].keys) - set(sources[REFINED].keys))
    log(f"[evaluate] task {task}: " + ", ".join(f"{n} {len(d)}" for n, d in sources.items())
        + f", real test {len(test)} images; {seeds} seeds x {settings.steps} steps")

    downstream_scores: dict[str, list] = {name: [] for name in sources}
    two_sample: dict[str, list] = {name: [] for name in sources}
    preservation: dict[str, list] = {SYNTHETIC: [], REFINED: []}
    features: dict[str, list] = {name: [] for name in sources}
    for seed in range(seeds):
        models = {}
        for name, data in sources.items():
            tick = time.time()
            models[name] = downstream.train_estimator(task, data.images, targets(task, data), seed, settings)
            downstream_scores[name].append(score(task, models[name], test, truth))
            headline, _ = HEADLINE[task]
            log(f"[evaluate] seed {seed + 1}/{seeds}: trained on {name}: "
                f"{headline} {downstream_scores[name][-1][headline]:.4f} ({time.time() - tick:.1f} s)")
        for name, data in sources.items():
            two_sample[name].append({"accuracy": two_sample_accuracy(
                test.images, data.images, seed=seed, epochs=two_sample_epochs)})
        log(f"[evaluate] seed {seed + 1}/{seeds}: two-sample accuracy "
            + ", ".join(f"real vs {n} {v[-1]['accuracy']:.3f}" for n, v in two_sample.items()))
        if REAL in models:
            for name in (SYNTHETIC, REFINED):
                data = sources[name]
                key = "agreement" if task == "digits" else "mean_angle_error"
                preservation[name].append({key: realism.label_agreement(
                    task, models[REAL], data.images, targets(task, data))})
            for name, data in sources.items():
                features[name].append(realism.feature_metrics(task, models[REAL], test.images, data.images))

    results = {
        "task": task,
        "seeds": list(range(seeds)),
        "settings": settings.to_dict(),
        "two_sample_epochs": two_sample_epochs,
        "headline": {"metric": HEADLINE[task][0], "higher_is_better": HEADLINE[task][1]},
        "folders": {**folders, "real-test": real_test_dir},
        "counts": {**{n: len(d) for n, d in sources.items()}, "real-test": len(test)},
        "problems": problems,
        "refined_missing_keys": {"count": len(missing), "first": missing[:20]},
        "downstream": {n: _summaries(v) for n, v in downstream_scores.items()},
        "two_sample": {n: _summaries(v) for n, v in two_sample.items()},
        "label_preservation": (
            {n: _summaries(v) for n, v in preservation.items()} if REAL in sources else None
        ),
        "feature_metrics": {n: _summaries(v) for n, v in features.items()} if REAL in sources else None,
        "seconds": round(time.time() - started, 1),
        "command": command,
        "versions": versions(),
    }
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, RESULTS), results)
    log(f"[evaluate] done in {results['seconds']} s: {os.path.join(out_dir, RESULTS)}")
    return results


def load_results(path: str) -> dict:
    """Results from a results file or the folder holding one."""
    if os.path.isdir(path):
        path = os.path.join(path, RESULTS)
    if not os.path.isfile(path):
        raise UserError(f"no evaluation results at {path} (run `simgan evaluate` first)")
    with open(path) as handle:
        return json.load(handle)


def refinement_gain(results: dict) -> float:
    """Refined minus synthetic on the headline metric (mean over seeds)."""
    name = results["headline"]["metric"]
    scores = results["downstream"]
    return scores[REFINED][name]["mean"] - scores[SYNTHETIC][name]["mean"]
