"""Scores: downstream accuracy and gaze error, realism and label metrics.

Pure functions on numpy arrays. The feature-space metrics (Inception-score analogue,
Frechet distance) take predictions or features from a classifier trained here on real
labelled data, because no pretrained weights can be downloaded.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg
from scipy.stats import binomtest

WITHIN_DEGREES = tuple(range(5, 26))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def angle_errors(predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Angle in degrees between predicted and true 3-D gaze vectors, per sample."""
    p = predicted / np.linalg.norm(predicted, axis=1, keepdims=True)
    t = true / np.linalg.norm(true, axis=1, keepdims=True)
    cosine = np.clip(np.sum(p * t, axis=1), -1.0, 1.0)
    return np.degrees(np.arccos(cosine))


def share_within(errors: np.ndarray, degrees=WITHIN_DEGREES) -> dict[str, float]:
    """Share of samples whose angle error is at most d degrees, for each d (Table 2's curve)."""
    return {str(d): float(np.mean(errors <= d)) for d in degrees}


def summarise(values) -> dict:
    """Mean and spread (sample standard deviation) over seeds."""
    values = [float(v) for v in values]
    spread = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": spread, "values": values}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def inception_score(probabilities: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))): high when each prediction is confident and the
    predictions together are diverse. Ranges from 1 to the number of classes."""
    p = np.clip(probabilities, 1e-12, 1.0)
    marginal = p.mean(axis=0, keepdims=True)
    kl = np.sum(p * (np.log(p) - np.log(marginal)), axis=1)
    return float(np.exp(kl.mean()))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussian fits."""
    mu_a, mu_b = features_a.mean(axis=0), features_b.mean(axis=0)
    cov_a = np.cov(features_a, rowvar=False)
    cov_b = np.cov(features_b, rowvar=False)
    with warnings.catch_warnings():
        # Dead ReLU features make the product singular; the square root is still
        # usable, and a non-finite one is handled below.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
    if not np.all(np.isfinite(root)):
        # A singular product (e.g. dead features): nudge both covariances, as FID code does.
        eps = np.eye(len(cov_a)) * 1e-6
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    root = np.real(root)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def binomial_p_value(correct: int, total: int) -> float:
    """One-sided p-value that raters beat chance (50 %): the paper's 517/1000 gives 0.148."""
    if total == 0:
        return 1.0
    return float(binomtest(correct, total, 0.5, alternative="greater").pvalue)
