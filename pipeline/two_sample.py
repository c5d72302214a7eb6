"""How well a small classifier, trained fresh, tells two sets of images apart.

`two_sample_test` is the realism check of training's checkpoint selection and
`two_sample_accuracy` that of `simgan evaluate`: near 0.5 means the sets look alike to
it, near 1.0 means they are easy to tell apart. Refined images that are more realistic than the raw synthetic ones
score closer to 0.5 against real images.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _classifier(channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(128, 2),
    )


# Passes over the training half (more when `min_steps` asks for them): the default of
# the check in `simgan evaluate` and the demo.
TWO_SAMPLE_EPOCHS = 8


def two_sample_accuracy(real_images: np.ndarray, other_images: np.ndarray, seed: int = 0, max_per_set: int = 2000,
                        epochs: int = TWO_SAMPLE_EPOCHS, held_out: float = 0.3, min_steps: int = 0) -> float:
    """Held-out accuracy of a fresh CNN trained to tell `real_images` from `other_images`
    (see `two_sample_test`)."""
    return two_sample_test(real_images, other_images, seed, max_per_set, epochs, held_out, min_steps)["accuracy"]


def two_sample_test(
    real_images: np.ndarray,
    other_images: np.ndarray,
    seed: int = 0,
    max_per_set: int = 2000,
    epochs: int = TWO_SAMPLE_EPOCHS,
    held_out: float = 0.3,
    min_steps: int = 0,
) -> dict[str, float]:
    """A fresh CNN trained to tell `real_images` from `other_images`, scored on held-out
    images: its accuracy, and its confidence (the mean probability it gives the true
    set). Confidence keeps falling as two sets grow alike after accuracy has stopped
    saying so (a strong classifier tells a raw and a better refined set apart from real
    images with the same 100 %).

    Both are N x C x H x W float arrays in [0, 1] of one size. The two sets are
    balanced (the same number from each, at most `max_per_set`), then split: the
    classifier trains on 1 - `held_out` of them and is scored on the rest, for
    `epochs` passes or more, until it has taken at least `min_steps` steps (on small
    sets a few epochs are too few steps to learn anything).
    """
    real_images, other_images = np.asarray(real_images, np.float32), np.asarray(other_images, np.float32)
    if real_images.shape[1:] != other_images.shape[1:]:
        raise ValueError(f"image shapes differ: {real_images.shape[1:]} vs {other_images.shape[1:]}")
    rng = np.random.default_rng(seed)
    n = min(len(real_images), len(other_images), max_per_set)
    if n < 10:
        raise ValueError(f"need at least 10 images per set, got {n}")
    x = np.concatenate([real_images[rng.permutation(len(real_images))[:n]], other_images[rng.permutation(len(other_images))[:n]]])
    y = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
    order = rng.permutation(2 * n)
    x, y = torch.from_numpy(x[order]), torch.from_numpy(y[order])
    cut = int(round(2 * n * (1 - held_out)))
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = _classifier(x.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = -(-cut // 64)
    for _ in range(max(epochs, -(-min_steps // batches))):
        model.train()
        for batch in torch.randperm(cut, generator=generator).split(64):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(part) for part in x[cut:].split(256)])
    truth = y[cut:]
    return {
        "accuracy": float((logits.argmax(dim=1) == truth).float().mean()),
        "confidence": float(logits.softmax(dim=1)[torch.arange(len(truth)), truth].mean()),
    }
