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

import numpy as np

from pipeline import console
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
log = console.logger("pipeline.evaluation")


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


def _load(task: str, folders: dict[str, str], real_test_dir: str):
    """(sources, real test set, problems per source): every folder read, same shapes."""
    label = LABEL[task]
    sources = {name: images.load_folder(folder, require=label) for name, folder in folders.items()}
    test = images.load_folder(real_test_dir, require=label)
    everything = {**sources, "real-test": test}
    shapes = {name: data.shape for name, data in everything.items()}
    if len(set(shapes.values())) != 1:
        raise UserError(f"the folders hold images of different shapes: {shapes}")
    problems = {name: data.problem_records() for name, data in everything.items()}
    for name, records in problems.items():
        if records:
            log.info(f"[evaluate] {name}: {len(records)} unusable samples left out (listed in {RESULTS}), "
                     f"first: {records[0]['shard']} key {records[0]['key']!r}: {records[0]['message']}")
    return sources, test, problems


def _measure_seed(task, sources, test, truth, seed, seeds, settings, two_sample_epochs) -> dict[str, dict]:
    """One seed's scores: {measure: {source: scores}}."""
    models, found = {}, {"downstream": {}, "two_sample": {}, "label_preservation": {}, "feature_metrics": {}}
    headline, _ = HEADLINE[task]
    for name, data in sources.items():
        began = time.time()
        models[name] = downstream.train_estimator(task, data.images, targets(task, data), seed, settings)
        found["downstream"][name] = score(task, models[name], test, truth)
        log.info(f"[evaluate] seed {seed + 1}/{seeds}: trained on {name}: "
                 f"{headline} {found['downstream'][name][headline]:.4f} ({time.time() - began:.1f} s)")
    for name, data in sources.items():
        found["two_sample"][name] = {"accuracy": two_sample_accuracy(test.images, data.images, seed=seed,
                                                                     epochs=two_sample_epochs)}
    log.info(f"[evaluate] seed {seed + 1}/{seeds}: two-sample accuracy "
             + ", ".join(f"real vs {n} {v['accuracy']:.3f}" for n, v in found["two_sample"].items()))
    if REAL in models:
        key = "agreement" if task == "digits" else "mean_angle_error"
        for name in (SYNTHETIC, REFINED):
            data = sources[name]
            found["label_preservation"][name] = {key: realism.label_agreement(
                task, models[REAL], data.images, targets(task, data))}
        for name, data in sources.items():
            found["feature_metrics"][name] = realism.feature_metrics(task, models[REAL], test.images, data.images)
    return found


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
) -> dict:
    """Run the evaluation and write `out_dir/results.json`; returns the results."""
    if task not in LABEL:
        raise UserError(f"unknown task {task!r}; choose from {sorted(LABEL)}")
    if seeds < 1:
        raise UserError("--seeds must be at least 1")
    settings = settings or downstream.TrainSettings()
    started = time.time()
    folders = {SYNTHETIC: synthetic_dir, REFINED: refined_dir, **({REAL: real_train_dir} if real_train_dir else {})}
    sources, test, problems = _load(task, folders, real_test_dir)
    truth = targets(task, test)
    missing = sorted(set(sources[SYNTHETIC].keys) - set(sources[REFINED].keys))
    log.info(f"[evaluate] task {task}: " + ", ".join(f"{n} {len(d)}" for n, d in sources.items())
             + f", real test {len(test)} images; {seeds} seeds x {settings.steps} steps")
    per_seed = [_measure_seed(task, sources, test, truth, seed, seeds, settings, two_sample_epochs)
                for seed in range(seeds)]

    def summaries(measure: str) -> dict | None:
        names = per_seed[0][measure]
        return {n: _summaries([found[measure][n] for found in per_seed]) for n in names} if names else None

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
        **{measure: summaries(measure) for measure in ("downstream", "two_sample", "label_preservation",
                                                       "feature_metrics")},
        "seconds": round(time.time() - started, 1),
        "command": command,
        "versions": versions(),
    }
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, RESULTS), results)
    log.info(f"[evaluate] done in {results['seconds']} s: {os.path.join(out_dir, RESULTS)}")
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
