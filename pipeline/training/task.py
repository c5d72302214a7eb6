"""The task network: a small model trained on the simulator's own labels.

It serves two purposes. As a *check*, it must predict the same label on a refined image
as on the synthetic image it came from: a refiner that changes what the label describes
(a 7 that became a 1, a gaze that moved) fails it, and no real label is needed for
that. As an optional *loss* (CyCADA's semantic consistency), its prediction on the
refined image is pulled towards the simulator's label, which lets the refiner change
appearance more than the L1 term alone would allow while keeping the label true.

It is trained with strong appearance augmentation (polarity, gamma, contrast, blur,
noise), so it reads content, not appearance: a refiner is meant to change the latter.
Plain PyTorch and numpy; nothing here knows about shards, Ray or files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.errors import UserError

CLASSIFICATION, REGRESSION = "classification", "regression"
MAX_CLASSES = 1000


@dataclass
class Labels:
    """One label of every synthetic image, as the task network learns it."""

    name: str
    kind: str  # CLASSIFICATION or REGRESSION
    values: np.ndarray  # int64 class indices (N,) or float32 (N, D)
    classes: list  # the label's original values, by class index (classification only)

    @property
    def outputs(self) -> int:
        return len(self.classes) if self.kind == CLASSIFICATION else self.values.shape[1]

    def subset(self, index: np.ndarray) -> "Labels":
        return Labels(self.name, self.kind, self.values[index], self.classes)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def extract_labels(labels: list[dict], name: str, keys: list[str]) -> Labels:
    """The label `name` of every sample: integers, strings and booleans are classes;
    fractional numbers and lists of numbers are regression targets."""
    missing = [key for key, found in zip(keys, labels) if name not in found]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(labels)} synthetic samples have no label {name!r} (first: {missing[0]}); "
            f"name the label the refiner must keep with --set label=NAME (labels of the first sample: "
            f"{', '.join(sorted(labels[0])) or 'none'}), or --set label= to train without the label checks"
        )
    values = [found[name] for found in labels]
    if all(isinstance(v, (str, bool)) or (isinstance(v, int) and not isinstance(v, bool)) for v in values):
        classes = sorted(set(values), key=lambda v: (type(v).__name__, v))
        if 2 <= len(classes) <= MAX_CLASSES:
            index = {value: i for i, value in enumerate(classes)}
            return Labels(name, CLASSIFICATION, np.array([index[v] for v in values], np.int64), classes)
        if len(classes) < 2:
            raise UserError(f"label {name!r} has one value ({classes[0]!r}) in every sample: nothing to check")
    vectors = []
    for key, value in zip(keys, values):
        vector = value if isinstance(value, list) else [value]
        if not vector or not all(_is_number(v) and math.isfinite(v) for v in vector):
            raise UserError(f"label {name!r} of {key} is {json.dumps(value)[:80]}: not a class or a list of numbers")
        vectors.append([float(v) for v in vector])
    if len({len(v) for v in vectors}) != 1:
        raise UserError(f"label {name!r} has vectors of different lengths across samples")
    return Labels(name, REGRESSION, np.asarray(vectors, np.float32), [])


class TaskNetwork(nn.Module):
    """Four convolutions and a small head; any input size (adaptive pooling to 4x4).

    Each image is standardised (zero mean, unit spread) on the way in: without that,
    the network does not learn at all under the strong appearance augmentation.
    """

    def __init__(self, channels: int, outputs: int, kind: str):
        super().__init__()
        self.kind = kind
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(64 * 16, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        spread = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(0.02)
        return self.head(self.body((x - mean) / spread))


def appearance_augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random polarity, gamma, contrast and offset, blur and noise: everything a refiner
    may change about an image, nothing about what it shows."""
    n = batch.shape[0]

    def uniform(low, high):
        return low + (high - low) * torch.rand(n, 1, 1, 1, generator=generator, device=batch.device)

    flip = torch.rand(n, 1, 1, 1, generator=generator, device=batch.device) < 0.5
    x = torch.where(flip, 1 - batch, batch)
    x = x.clamp(1e-4, 1) ** torch.exp(uniform(-0.7, 0.7))
    contrast = uniform(0.25, 1.0)
    x = uniform(0, 1) * (1 - contrast) + contrast * x
    sigma = uniform(0.0, 1.2)
    kernel = torch.exp(-(torch.arange(-2, 3, device=batch.device).view(1, 5) ** 2) / (2 * sigma.view(n, 1) ** 2 + 1e-6))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    channels = x.shape[1]
    rows = kernel.repeat_interleave(channels, 0).view(n * channels, 1, 1, 5)
    flat = x.reshape(1, n * channels, *x.shape[2:])
    flat = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="replicate"), rows, groups=n * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, 2, 2), mode="replicate"), rows.transpose(2, 3), groups=n * channels)
    x = flat.view_as(x)
    noise = torch.randn(x.shape, generator=generator, device=batch.device) * uniform(0, 0.08)
    return (x + noise).clamp(0, 1)


def task_loss(network: TaskNetwork, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    outputs = network(images)
    if network.kind == CLASSIFICATION:
        return F.cross_entropy(outputs, targets)
    return F.mse_loss(outputs, targets)


def train_task_network(images: torch.Tensor, labels: Labels, seed: int, steps: int = 400,
                       batch_size: int = 64) -> TaskNetwork:
    """Fit the task network on synthetic images and their labels (deterministic in `seed`)."""
    device = images.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = TaskNetwork(images.shape[1], labels.outputs, labels.kind).to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    targets = torch.from_numpy(labels.values).to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-3)
    network.train()
    for _ in range(steps):
        index = torch.randint(0, len(images), (batch_size,), generator=generator, device=device)
        loss = task_loss(network, appearance_augment(images[index], generator), targets[index])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    network.eval()
    for p in network.parameters():
        p.requires_grad_(False)
    return network


@torch.no_grad()
def predict(network: TaskNetwork, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([network(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def consistency(network: TaskNetwork, synthetic: torch.Tensor, refined: torch.Tensor) -> float:
    """How far the task network reads the same label in refined as in synthetic images, in [0, 1].

    Classification: the share of images whose predicted class is unchanged.
    Regression: 1 - (mean change of the prediction) / (mean spread of the predictions
    over the synthetic images), so 1 is unchanged and 0 is as far as a random image.
    """
    before, after = predict(network, synthetic), predict(network, refined)
    if network.kind == CLASSIFICATION:
        return float((before.argmax(dim=1) == after.argmax(dim=1)).float().mean())
    change = (after - before).norm(dim=1).mean()
    spread = (before - before.mean(dim=0)).norm(dim=1).mean().clamp_min(1e-8)
    return float((1 - change / spread).clamp(0, 1))


def accuracy(network: TaskNetwork, images: torch.Tensor, labels: Labels) -> float:
    """Agreement with the simulator's labels (classification) or 1 - relative error."""
    outputs = predict(network, images)
    targets = torch.from_numpy(labels.values).to(outputs.device)
    if network.kind == CLASSIFICATION:
        return float((outputs.argmax(dim=1) == targets).float().mean())
    spread = (targets - targets.mean(dim=0)).norm(dim=1).mean().clamp_min(1e-8)
    return float((1 - (outputs - targets).norm(dim=1).mean() / spread).clamp(0, 1))
