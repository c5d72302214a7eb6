"""Checkpoint selection without real labels, and the refusal of refiners that would harm data.

The last checkpoint of an adversarial run is not the best one, and on some domains it
is a collapsed one. So a share of the synthetic images and of the unlabelled real
images is held out at the start and never trained on. Every `select_every` steps of
the adversarial phase, and at the last step, the current refiner refines the held-out
synthetic images and is scored on three label-free criteria:

- realism: the confidence of a fresh two-sample classifier telling refined from real
  held-out images (the mean probability it gives the true set: 0.5 indistinguishable,
  1.0 told apart with certainty; the raw synthetic images' own figure is the bar);
- collapse: contrast and diversity against the synthetic and real images' own;
- label consistency: the task network, trained on the simulator's labels, must read
  the same label on the refined image as on the synthetic one.

RULE (the README states it too): a candidate passes when it has not collapsed, its
label consistency is at least `min_label_consistency`, and its two-sample confidence is
at least `realism_margin` below the raw synthetic images'. The exported refiner is the
passing candidate with the lowest two-sample confidence (the earlier step on ties). When
no candidate passes, no usable refiner is exported and training fails.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline import console
from pipeline.models import refine_array
from pipeline.training import collapse, task
from pipeline.training.config import TrainConfig
from pipeline.training.step import ADVERSARIAL, phase, unwrap
from pipeline.two_sample import two_sample_test

SELECTION_FILE = "selection.jsonl"  # one scored candidate per line
CHOICE_FILE = "selection.json"  # the verdict: which candidate, by which rule, and why
CANDIDATES_DIR = "candidates"
log = console.logger("pipeline.training")
MAX_HELD_OUT = 1000
MIN_HELD_OUT = 10  # the two-sample test needs at least 10 images per side
# Steps of each fresh two-sample classifier, whatever the number of held-out images.
TWO_SAMPLE_STEPS = 300
COLLAPSE, LABELS, REALISM = "collapse", "labels", "realism"
CHECK_NAMES = {COLLAPSE: "collapsed", LABELS: "labels not kept", REALISM: "not more realistic"}
RULE = (
    "a candidate passes when it has not collapsed (contrast and diversity at least half the lower of the "
    "synthetic and real images'), its label consistency is at least min_label_consistency, and its "
    "two-sample confidence is at least realism_margin below the raw synthetic images'; the passing "
    "candidate with the lowest two-sample confidence is exported (the earlier step on ties)"
)


def split_index(count: int, fraction: float, seed: int, salt: str) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices) of `count` images, fixed by the seed."""
    held = min(max(MIN_HELD_OUT, int(round(fraction * count))), MAX_HELD_OUT, count // 2)
    order = np.random.default_rng([seed, int.from_bytes(salt.encode(), "little")]).permutation(count)
    return np.sort(order[held:]), np.sort(order[:held])


@dataclass
class HeldOut:
    """What candidates are scored on: images never trained on, and the task network."""

    synthetic: torch.Tensor
    real: torch.Tensor
    network: task.TaskNetwork | None
    raw_two_sample: float  # the raw synthetic images' own realism figures
    raw_confidence: float
    seed: int


@dataclass
class Prepared:
    """The training pools after the held-out split, and what selection needs."""

    synthetic: torch.Tensor
    real: torch.Tensor
    labels: torch.Tensor | None  # the task label of each training synthetic image
    held_out: HeldOut
    # For the label-consistency loss: a task network of its own (another seed), since a
    # refiner trained against the checking network could learn to satisfy that one
    # network and pass its check while changing what other models read.
    loss_network: task.TaskNetwork | None = None


def prepare(config: TrainConfig, synthetic: torch.Tensor, real: torch.Tensor,
            labels: task.Labels | None) -> Prepared:
    """Split off the held-out images and train the task network. Deterministic in the
    config's seed, so every Ray Train worker and every resumed run gets the same split."""
    train_s, held_s = split_index(len(synthetic), config.held_out, config.seed, "synthetic")
    train_r, held_r = split_index(len(real), config.held_out, config.seed, "real")
    index_s, index_r = torch.from_numpy(train_s).to(synthetic.device), torch.from_numpy(train_r).to(real.device)
    network, label_values, loss_network = None, None, None
    if labels is not None:
        train_labels = labels.subset(train_s)
        network = task.train_task_network(synthetic[index_s], train_labels, config.seed)
        label_values = torch.from_numpy(train_labels.values).to(synthetic.device)
        if config.label_consistency_weight > 0:
            loss_network = task.train_task_network(synthetic[index_s], train_labels, config.seed + 1)
    held_synthetic = synthetic[torch.from_numpy(held_s).to(synthetic.device)]
    held_real = real[torch.from_numpy(held_r).to(real.device)]
    raw = two_sample_test(held_real.cpu().numpy(), held_synthetic.cpu().numpy(), seed=config.seed,
                          min_steps=TWO_SAMPLE_STEPS)
    return Prepared(synthetic[index_s], real[index_r], label_values,
                    HeldOut(held_synthetic, held_real, network, raw["accuracy"], raw["confidence"], config.seed),
                    loss_network)


def score(refiner: torch.nn.Module, held_out: HeldOut, config: TrainConfig) -> dict:
    """The candidate's figures and verdict on the held-out images."""
    synthetic = held_out.synthetic.cpu().numpy()
    real = held_out.real.cpu().numpy()
    refined = refine_array(unwrap(refiner), synthetic)
    test = two_sample_test(real, refined, seed=held_out.seed, min_steps=TWO_SAMPLE_STEPS)
    figures = {
        "two_sample": test["accuracy"],
        "raw_two_sample": held_out.raw_two_sample,
        "confidence": test["confidence"],
        "raw_confidence": held_out.raw_confidence,
        **collapse.collapse_figures(synthetic, refined, real),
    }
    failed, checks = [], []
    if figures["collapsed"]:
        checks.append(COLLAPSE)
        failed.append("collapsed: " + collapse.describe(figures))
    if held_out.network is not None:
        device = held_out.synthetic.device
        figures["label_consistency"] = task.consistency(
            held_out.network, held_out.synthetic, torch.from_numpy(refined).to(device))
        if figures["label_consistency"] < config.min_label_consistency:
            checks.append(LABELS)
            failed.append(f"label consistency {figures['label_consistency']:.3f} is below "
                          f"min_label_consistency {config.min_label_consistency:.2f}")
    if figures["confidence"] > held_out.raw_confidence - config.realism_margin:
        checks.append(REALISM)
        failed.append(f"not more realistic than the raw synthetic images (two-sample confidence "
                      f"{figures['confidence']:.3f}, raw {held_out.raw_confidence:.3f})")
    figures["passed"] = not failed
    figures["failed"] = failed
    figures["failed_checks"] = checks
    return figures


class Selector:
    """Scores candidates during training (rank 0 only) into RUN_DIR/selection.jsonl and
    keeps each candidate's refiner weights in RUN_DIR/candidates/. A resumed run first
    drops the records of steps it is about to redo."""

    def __init__(self, run_dir: str, config: TrainConfig, held_out: HeldOut, start_step: int, echo: bool = True):
        self.run_dir, self.config, self.held_out, self.echo = run_dir, config, held_out, echo
        self.path = os.path.join(run_dir, SELECTION_FILE)
        os.makedirs(os.path.join(run_dir, CANDIDATES_DIR), exist_ok=True)
        if os.path.exists(self.path):
            kept = [line for line in read_records(run_dir) if line["step"] <= start_step]
            with open(self.path, "w") as handle:
                handle.writelines(json.dumps(record) + "\n" for record in kept)

    def due(self, step: int) -> bool:
        """`step` steps are done: score now? Every select_every adversarial steps, and the last."""
        c = self.config
        if step == c.total_steps:
            return True
        adversarial_done = step - c.pretrain_refiner_steps - c.pretrain_discriminator_steps
        return phase(c, step - 1) == ADVERSARIAL and adversarial_done % c.select_every == 0

    def score(self, refiner: torch.nn.Module, step: int) -> dict:
        record = {"step": step, **score(refiner, self.held_out, self.config)}
        weights = {name: t.detach().cpu().contiguous() for name, t in unwrap(refiner).state_dict().items()}
        save_file(weights, candidate_path(self.run_dir, step))
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.echo:
            consistency = record.get("label_consistency")
            log.info(f"candidate at step {step}: two-sample confidence {record['confidence']:.3f} "
                  f"(raw {record['raw_confidence']:.3f}), "
                  f"contrast {record['refined_contrast']:.3f}, "
                  + (f"label consistency {consistency:.3f}, " if consistency is not None else "")
                  + ("passes" if record["passed"] else "fails: " + "; ".join(record["failed"])))
        return record


def candidate_path(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, CANDIDATES_DIR, f"refiner-step-{step:06d}.safetensors")


def read_records(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, SELECTION_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def choose(records: list[dict]) -> dict:
    """The verdict over the scored candidates, by RULE."""
    if not records:
        return {"status": "refused", "step": None, "reason": "no candidate was scored", "rule": RULE}
    passing = [r for r in records if r["passed"]]
    if passing:
        best = min(passing, key=lambda r: (r["confidence"], r["step"]))
        return {"status": "passed", "step": best["step"], "reason": f"{len(passing)} of {len(records)} candidates "
                f"passed; step {best['step']} is the most realistic (two-sample confidence {best['confidence']:.3f}, "
                f"raw {best['raw_confidence']:.3f}; accuracy {best['two_sample']:.3f}, raw {best['raw_two_sample']:.3f})",
                "rule": RULE, "scores": best}
    # The least bad candidate is still exported (marked failed) for inspection.
    least_bad = min(records, key=lambda r: (len(r["failed"]), r["confidence"], r["step"]))
    counts = [f"{CHECK_NAMES[check]} in {sum(check in r['failed_checks'] for r in records)}"
              for check in CHECK_NAMES if any(check in r["failed_checks"] for r in records)]
    return {"status": "refused", "step": least_bad["step"], "reason": f"none of the {len(records)} candidates passed ("
            + ", ".join(counts) + f"); the least bad, step {least_bad['step']}: " + "; ".join(least_bad["failed"]),
            "rule": RULE, "scores": least_bad}


def load_candidate(run_dir: str, step: int) -> dict[str, torch.Tensor]:
    return load_file(candidate_path(run_dir, step))
