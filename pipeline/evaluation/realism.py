"""Realism and label metrics that need a classifier trained here. (The two-sample test,
a fresh classifier telling real images from images X, is `pipeline.two_sample`.)

- Label preservation: an estimator trained on labelled *real* data, applied to X,
  agrees with the simulator's labels when refinement kept what the labels describe.
- Inception-score analogue and Frechet distance in the feature space of that real-trained
  classifier.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from pipeline.evaluation import downstream, metrics


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
