"""Small generated datasets the evaluation tests share. Digits: class c is a bright
square at one of ten places, so a classifier can learn it in a few dozen steps. "sharp"
images are clean; "soft" ones are blurred and noisy, the way the real side differs from
the simulator here. Eyes: a dark pupil on a light sclera, displaced by gaze."""

import os

import numpy as np

from pipeline import shards
from pipeline.data.output import write_labelled_shard


def pattern_digit(label: int, rng: np.random.Generator, style: str = "sharp") -> np.ndarray:
    image = np.zeros((28, 28), np.float32)
    row, col = divmod(label, 5)
    top, left = 4 + row * 12 + rng.integers(-1, 2), 2 + col * 5 + rng.integers(0, 2)
    image[top : top + 6, left : left + 4] = 1.0
    if style == "soft":
        image = (image + np.roll(image, 1, 0) + np.roll(image, 1, 1)) / 3
        image = image * rng.uniform(0.6, 0.9) + rng.normal(0, 0.08, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_digits(folder, count, seed, style="sharp", labelled=True, prefix="d", per_shard=None):
    rng = np.random.default_rng(seed)
    per_shard = per_shard or count
    samples = []
    for i in range(count):
        label = int(rng.integers(0, 10))
        labels = {"class": label} if labelled else {"source": "stand-in", "index": i}
        samples.append((f"{prefix}{i:05d}", pattern_digit(label, rng, style), labels))
    for index, start in enumerate(range(0, count, per_shard)):
        write_labelled_shard(str(folder), f"{prefix}-{index:06d}.tar", samples[start : start + per_shard])
    return str(folder)


def gaze_vector(yaw_deg: float, pitch_deg: float) -> list[float]:
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    return [float(np.cos(pitch) * np.sin(yaw)), float(np.sin(pitch)), float(-np.cos(pitch) * np.cos(yaw))]


def write_eyes(folder, count, seed, style="sharp"):
    """35x55 stand-in eyes: a dark pupil on a light sclera, displaced by yaw and pitch."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:35, 0:55]
    samples = []
    for i in range(count):
        yaw, pitch = rng.uniform(-25, 25), rng.uniform(-20, 20)
        cx, cy = 27 + yaw * 0.7, 17 - pitch * 0.5
        image = np.full((35, 55), 0.8, np.float32)
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < 20] = 0.15
        if style == "soft":
            image = image * rng.uniform(0.7, 1.0) + rng.normal(0, 0.05, image.shape)
        labels = {"gaze": gaze_vector(yaw, pitch), "yaw": float(yaw), "pitch": float(pitch)}
        samples.append((f"e{i:05d}", (np.clip(image, 0, 1) * 255).astype(np.uint8), labels))
    write_labelled_shard(str(folder), "e-000000.tar", samples)
    return str(folder)


def soften(source, target, seed):
    """A stand-in for refinement: the same keys and labels, images blurred and noised the
    way the stand-in 'real' images are."""
    rng = np.random.default_rng(seed)
    for path in shards.list_shards(source):
        samples = []
        for item in shards.iter_shard(path):
            sample = shards.decode_sample(item)
            image = sample.image.astype(np.float32) / 255
            image = (image + np.roll(image, 1, 0) + np.roll(image, 1, 1)) / 3
            image = image * rng.uniform(0.6, 0.9) + rng.normal(0, 0.08, image.shape)
            samples.append((sample.key, (np.clip(image, 0, 1) * 255).astype(np.uint8), sample.labels))
        write_labelled_shard(str(target), os.path.basename(path), samples)
    return str(target)
