"""Downstream estimators: what a refined dataset is for.

The same estimator, trained with the same seed, steps, batch order and augmentation,
is fitted on each training source (raw synthetic, refined, real) and tested on real
held-out data. Two tasks:

- `digits`: a small CNN classifier (10 classes), scored by accuracy;
- `gaze`: the paper's gaze CNN regressing a unit 3-D gaze vector with an L2 loss,
  scored by angle error.

Plain PyTorch on numpy arrays; nothing here knows about shards, Ray or reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class DigitsCNN(nn.Module):
    """Two conv blocks and a small head; about 0.1 M parameters, CPU-fast on 28x28."""

    def __init__(self, channels: int = 1, classes: int = 10, height: int = 28, width: int = 28):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * (height // 4) * (width // 4), 64)
        self.out = nn.Linear(64, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer: the feature space of the Frechet distance."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


@dataclass(frozen=True)
class GazeSpec:
    """Channel widths of the gaze CNN; `paper` is the network of Shrivastava et al."""

    convs: tuple = (32, 32, 64, 80, 192)
    hidden: int = 1000


GAZE_SPECS = {
    "paper": GazeSpec(),
    # A quarter of the width, for quick checks on small machines.
    "small": GazeSpec(convs=(8, 8, 16, 20, 48), hidden=128),
}


class GazeCNN(nn.Module):
    """conv3x3 32, conv3x3 32, conv3x3 64, maxpool 3x3 s2, conv3x3 80, conv3x3 192,
    maxpool 2x2 s2, FC 9600 -> 1000, FC 3, output normalised to a unit vector.

    On a 35x55 input the last pooled map is 192 x 5 x 10 = 9600 values, the paper's
    "FC 9600".
    """

    def __init__(self, spec: GazeSpec = GazeSpec(), channels: int = 1, height: int = 35, width: int = 55):
        super().__init__()
        c1, c2, c3, c4, c5 = spec.convs
        self.block1 = nn.Sequential(
            nn.Conv2d(channels, c1, 3), nn.ReLU(),
            nn.Conv2d(c1, c2, 3), nn.ReLU(),
            nn.Conv2d(c2, c3, 3), nn.ReLU(),
            nn.MaxPool2d(3, 2),
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(c3, c4, 3), nn.ReLU(),
            nn.Conv2d(c4, c5, 3), nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        with torch.no_grad():
            flat = self.block2(self.block1(torch.zeros(1, channels, height, width))).numel()
        self.fc = nn.Linear(flat, spec.hidden)
        self.out = nn.Linear(spec.hidden, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.block2(self.block1(x)).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.out(self.features(x)), dim=1)


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides how a downstream estimator is trained, for every source."""

    steps: int = 400
    batch_size: int = 64
    learning_rate: float = 1e-3
    # Augmentation: a random translation of up to `shift` pixels (edge-replicated) and a
    # random brightness/contrast change of up to `jitter`; identical for every source.
    shift: int = 2
    jitter: float = 0.1
    gaze_model: str = "paper"

    def to_dict(self) -> dict:
        return asdict(self)


TASKS = ("digits", "gaze")
CLASSES = {"digits": 10}  # classification tasks and their class counts


def build_model(task: str, shape: tuple[int, int, int], settings: TrainSettings) -> nn.Module:
    channels, height, width = shape
    if task in CLASSES:
        return DigitsCNN(channels, CLASSES[task], height, width)
    if task == "gaze":
        return GazeCNN(GAZE_SPECS[settings.gaze_model], channels, height, width)
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")


def loss_fn(task: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if task in CLASSES:
        return F.cross_entropy(outputs, targets)
    # Squared L2 distance between unit vectors, as in the paper.
    return ((outputs - targets) ** 2).sum(dim=1).mean()


def augment(batch: torch.Tensor, generator: torch.Generator, shift: int, jitter: float) -> torch.Tensor:
    """Random translation and brightness/contrast, drawn from `generator` only."""
    n, _, height, width = batch.shape
    if shift > 0:
        padded = F.pad(batch, (shift, shift, shift, shift), mode="replicate")
        offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=generator)
        batch = torch.stack(
            [padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets.tolist())]
        )
    if jitter > 0:
        contrast = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * jitter
        brightness = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * jitter
        mean = batch.mean(dim=(1, 2, 3), keepdim=True)
        batch = ((batch - mean) * contrast + mean + brightness).clamp(0, 1)
    return batch


def train_estimator(
    task: str, images: np.ndarray, targets: np.ndarray, seed: int, settings: TrainSettings = TrainSettings()
) -> nn.Module:
    """Fit the task's estimator on `images` (N x C x H x W float32) and `targets`.

    The seed fixes the initial weights, the batch order and the augmentation, so two
    sources trained with the same seed differ only in their data.
    """
    torch.manual_seed(seed)
    model = build_model(task, images.shape[1:], settings)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    x_all = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    y_all = torch.from_numpy(np.asarray(targets))
    model.train()
    for _ in range(settings.steps):
        index = torch.randint(0, len(x_all), (settings.batch_size,), generator=generator)
        batch = augment(x_all[index], generator, settings.shift, settings.jitter)
        loss = loss_fn(task, model(batch), y_all[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Outputs for every image: class logits (digits) or unit gaze vectors (gaze)."""
    model.eval()
    parts = [
        model(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32)))
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts).numpy()


@torch.no_grad()
def extract_features(model: nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    model.eval()
    parts = [
        model.features(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32)))
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts).numpy()
