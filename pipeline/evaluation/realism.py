"""Realism and label metrics that need a classifier trained here.

- Two-sample test: a fresh classifier learns to tell real images from images X; its
  held-out accuracy is near 100 % when X is easy to spot and 50 % when X is
  indistinguishable from real.
- Label preservation: an estimator trained on labelled *real* data, applied to X,
  agrees with the simulator's labels when refinement kept what the labels describe.
- Inception-score analogue and Frechet distance in the feature space of that real-trained
  classifier.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from pipeline.evaluation import downstream, metrics

# No augmentation for the two-sample classifier: shifts and brightness changes would
# blur exactly the local statistics it has to find.
TWO_SAMPLE_SETTINGS = downstream.TrainSettings(steps=300, batch_size=64, shift=0, jitter=0.0)


def two_sample_accuracy(
    real: np.ndarray, other: np.ndarray, seed: int, settings: downstream.TrainSettings = TWO_SAMPLE_SETTINGS
) -> float:
    """Held-out accuracy of a classifier trained to tell `real` from `other`.

    Both sets are cut to the same size (so 50 % is chance) and split in halves: one to
    train on, one to score.
    """
    rng = np.random.default_rng(seed)
    n = min(len(real), len(other))
    if n < 4:
        raise ValueError(f"the two-sample test needs at least 4 images per side, got {n}")
    real = real[rng.permutation(len(real))[:n]]
    other = other[rng.permutation(len(other))[:n]]
    half = n // 2
    train_x = np.concatenate([real[:half], other[:half]])
    train_y = np.concatenate([np.zeros(half, np.int64), np.ones(half, np.int64)])
    test_x = np.concatenate([real[half:], other[half:]])
    test_y = np.concatenate([np.zeros(n - half, np.int64), np.ones(n - half, np.int64)])
    model = downstream.train_estimator("real_vs_other", train_x, train_y, seed, settings)
    return metrics.accuracy(downstream.predict(model, test_x), test_y)


def label_agreement(task: str, real_model: nn.Module, images: np.ndarray, targets: np.ndarray) -> float:
    """digits: share of images the real-trained classifier gives the simulator's class;
    gaze: mean angle (degrees) between its prediction and the simulator's gaze."""
    outputs = downstream.predict(real_model, images)
    if task == "digits":
        return metrics.accuracy(outputs, targets)
    return float(np.mean(metrics.angle_errors(outputs, targets)))


def feature_metrics(task: str, real_model: nn.Module, real: np.ndarray, other: np.ndarray) -> dict:
    """Frechet distance to the real images and, for classifiers, the Inception-score analogue."""
    result = {
        "frechet_distance": metrics.frechet_distance(
            downstream.extract_features(real_model, real), downstream.extract_features(real_model, other)
        )
    }
    if task == "digits":
        result["inception_score"] = metrics.inception_score(
            metrics.softmax(downstream.predict(real_model, other))
        )
    return result
