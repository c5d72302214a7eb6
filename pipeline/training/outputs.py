"""What a run shows and leaves behind besides checkpoints: progress (a bar or lines), metrics
as JSON lines, sample grids (synthetic | refined | real) and the loss-curve plot."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from pipeline import console, shards
from pipeline.files import atomic_write

METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
CURVES_FILE = "loss_curves.png"
GRID_ROWS = 8
log = console.logger("pipeline.training")


class RunOutputs:
    """Written by one process (rank 0). A resumed run first drops the metric lines of
    steps it is about to redo, so metrics.jsonl has each step once."""

    def __init__(self, run_dir: str, total_steps: int, start_step: int, log_every: int, echo: bool = True,
                 images_left=None):
        self.run_dir = run_dir
        # images_left(step): images the steps from `step` on will process; steps of
        # different phases cost different amounts, so the ETA goes by images.
        self.images_left = images_left
        self.total_steps = total_steps
        self.log_every = log_every
        self.echo = echo
        self.metrics_path = os.path.join(run_dir, METRICS_FILE)
        os.makedirs(os.path.join(run_dir, SAMPLES_DIR), exist_ok=True)
        self._truncate(start_step)
        self.start_step = start_step
        self.started = time.perf_counter()
        self.images = 0

    def _truncate(self, start_step: int) -> None:
        if not os.path.exists(self.metrics_path):
            return
        with open(self.metrics_path) as handle:
            kept = [line for line in handle if line.strip() and json.loads(line)["step"] < start_step]
        with open(self.metrics_path, "w") as handle:
            handle.writelines(kept)

    def record(self, metrics: dict, images: int) -> None:
        self.images += images
        elapsed = time.perf_counter() - self.started
        done = metrics["step"] + 1 - self.start_step
        record = {**metrics, "images_per_s": self.images / elapsed if elapsed > 0 else 0.0, "elapsed_s": elapsed}
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        step = metrics["step"] + 1
        if not self.echo:
            return
        if self.images_left is not None and self.images:
            eta = self.images_left(step) / (self.images / elapsed)
        else:
            eta = elapsed / done * (self.total_steps - step)
        losses = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("loss"))
        rate = f"{record['images_per_s']:.0f} img/s"
        # Every step moves a bar on an interactive terminal; every log_every-th is a line.
        due = step % self.log_every == 0 or step == self.total_steps
        log.info(f"step {step}/{self.total_steps} [{metrics['phase']}] {losses} {rate} ETA {_duration(eta)}",
                 extra=console.tick(step, self.total_steps, "step", due, f"{metrics['phase']}, {rate}"))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def grid_image(synthetic: torch.Tensor, refined: torch.Tensor, real: torch.Tensor, gap: int = 2) -> np.ndarray:
    """One row per sample: synthetic | refined | real, as a uint8 HxW or HxWx3 image."""
    rows = []
    for s, r, y in zip(synthetic, refined, real):
        parts = [t.detach().cpu().clamp(0, 1).numpy() for t in (s, r, y)]
        spacer = np.ones((parts[0].shape[0], parts[0].shape[1], gap), dtype=np.float32)
        rows.append(np.concatenate([parts[0], spacer, parts[1], spacer, parts[2]], axis=2))
        rows.append(np.ones((rows[-1].shape[0], gap, rows[-1].shape[2]), dtype=np.float32))
    grid = np.concatenate(rows[:-1], axis=1)
    if grid.shape[0] not in (1, 3):  # other channel counts: show the channel mean
        grid = grid.mean(axis=0, keepdims=True)
    return shards.from_float(grid, 8)


def write_grid(run_dir: str, step: int, refiner: torch.nn.Module, synthetic: torch.Tensor, real: torch.Tensor) -> str:
    """samples/step-NNNNNNNN.png for the first GRID_ROWS synthetic and real images."""
    synthetic, real = synthetic[:GRID_ROWS], real[:GRID_ROWS]
    was_training = refiner.training
    refiner.eval()
    with torch.no_grad():
        refined = refiner(synthetic)
    refiner.train(was_training)
    path = os.path.join(run_dir, SAMPLES_DIR, f"step-{step:08d}.png")
    atomic_write(path, shards.encode_png(grid_image(synthetic, refined, real)))
    return path


def plot_loss_curves(run_dir: str) -> str | None:
    """loss_curves.png from metrics.jsonl: every loss against the step."""
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.exists(path):
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    with open(path) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    names = sorted({k for r in records for k in r if k.startswith("loss")})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in names:
        points = [(r["step"], r[name]) for r in records if name in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], label=name, linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("SimGAN training losses")
    out = os.path.join(run_dir, CURVES_FILE)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


SELECTION_PLOT = "selection.png"


def plot_selection(run_dir: str, records: list[dict], choice: dict) -> str | None:
    """selection.png: each candidate's realism and label consistency against the step,
    the raw synthetic images' realism as a line and the chosen candidate marked."""
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(steps, [r["confidence"] for r in records], "o-", label="two-sample confidence, real vs refined (lower: more realistic)")
    ax.axhline(records[0]["raw_confidence"], color="grey", linestyle="--", label="two-sample confidence, real vs raw synthetic")
    ax.plot(steps, [r["two_sample"] for r in records], ".:", label="two-sample accuracy, real vs refined")
    if any("label_consistency" in r for r in records):
        ax.plot(steps, [r.get("label_consistency", float("nan")) for r in records], "s-", label="label consistency")
    ax.plot(steps, [r["refined_contrast"] / max(r["real_contrast"], 1e-8) for r in records], "^-",
            label="contrast, refined / real")
    failed = [r for r in records if not r["passed"]]
    ax.plot([r["step"] for r in failed], [r["confidence"] for r in failed], "x", color="red", markersize=10,
            label="failed a check")
    if choice.get("status") == "passed":
        best = next(r for r in records if r["step"] == choice["step"])
        ax.plot([best["step"]], [best["confidence"]], "*", color="gold", markersize=18, markeredgecolor="black",
                label="exported")
    ax.set_xlabel("step")
    ax.set_ylim(0, max(1.05, max(r["refined_contrast"] / max(r["real_contrast"], 1e-8) for r in records) + 0.05))
    ax.legend(fontsize=8)
    ax.set_title(f"Checkpoint selection: {choice.get('status')}")
    out = os.path.join(run_dir, SELECTION_PLOT)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out
