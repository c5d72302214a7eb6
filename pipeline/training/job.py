"""The training job: config, data, the local or Ray Train run, then the refiner export."""

from __future__ import annotations

import dataclasses
import os

import torch

from pipeline import console
from pipeline.devices import pick_device
from pipeline.errors import UserError
from pipeline.files import atomic_write, write_json
from pipeline.models import Refiner, StrokeWidth
from pipeline.refiner_file import save_refiner
from pipeline.training import selection
from pipeline.training.config import TrainConfig, make_config, save_config
from pipeline.reading import Geometry
from pipeline.training.data import PROBLEMS_FILE, check_compatible, read_folder, record_problems
from pipeline.training.loop import run_local
from pipeline.training.outputs import plot_loss_curves, plot_selection
from pipeline.training.step import refiner_spec
from pipeline.training.task import extract_labels
from pipeline.training.tone import unevenness

REFINER_FILE = "refiner.safetensors"
# Where a run refused for its labels trains again with the label-consistency loss.
LABEL_LOSS_DIR = "with-label-loss"
LABEL_LOSS_WEIGHT = 1.0
# And where, refused for its labels again, it makes a refiner of the fitted tone, blur, shading and
# grain curves alone. A pen much broader than the simulator's makes the stroke-width
# curve, and D then the refiner, grow the bold font glyphs until their loops close, which
# nothing opens again; the curves alone keep every glyph's shape and still turn the
# polarity, the paper or the noise (thick strokes dark on light were refused in both
# runs above; the curves alone: 22.0 -> 62.4 %). With no adversarial refiner updates (k_g=0)
# every candidate is the same refiner, so one is scored, and D needs no pre-training.
CURVES_DIR = "fitted-curves-only"


def _curves_only(config: TrainConfig) -> dict | None:
    if not (config.tone_map or config.blur or config.grain or config.shading):
        return None  # nothing fitted: the refiner would be the identity
    return {"stroke_width": False, "k_g": 0, "label_consistency_weight": 0.0, "pretrain_discriminator_steps": 0,
            "iterations": config.select_every}


# The runs tried in turn after a run refused for its labels: (folder, its options, or
# None where it does not apply, and what it is).
RETRIES = (
    (LABEL_LOSS_DIR, lambda config: {"label_consistency_weight": LABEL_LOSS_WEIGHT},
     f"with the label-consistency loss (label_consistency_weight={LABEL_LOSS_WEIGHT:g})"),
    (CURVES_DIR, _curves_only,
     "with the fitted tone, blur, shading and grain curves alone (no stroke-width curve, no adversarial refiner "
     "updates)"),
)
log = console.logger("pipeline.training")


class RefinerRefused(UserError):
    """No checkpoint of the run passed the checks: the exported refiner is marked failed."""


def export_refiner(run_dir: str, config: TrainConfig, geometry: Geometry) -> str:
    """RUN_DIR/refiner.safetensors from the candidate the selection rule picks, with the
    verdict in RUN_DIR/selection.json and in the file itself. Raises RefinerRefused (after
    exporting the least bad candidate, marked failed) when no candidate passed."""
    records = selection.read_records(run_dir)
    choice = selection.choose(records)
    write_json(os.path.join(run_dir, selection.CHOICE_FILE), {**choice, "candidates": records})
    plot_selection(run_dir, records, choice)
    path = os.path.join(run_dir, REFINER_FILE)
    if choice["step"] is None:
        raise RefinerRefused(f"training in {run_dir} scored no candidate refiner")
    refiner = Refiner(refiner_spec(config, geometry.channels))
    refiner.load_state_dict(selection.load_candidate(run_dir, choice["step"]))
    quality = {"status": choice["status"], "step": choice["step"], "reason": choice["reason"]}
    save_refiner(path, refiner, config.model, geometry.height, geometry.width, geometry.bit_depth, quality=quality)
    if choice["status"] != "passed":
        raise RefinerRefused(
            f"no refiner of this run is safe to use: {choice['reason']}. {path} is marked failed and "
            "refine-dataset refuses it (--force overrides). See "
            f"{os.path.join(run_dir, selection.CHOICE_FILE)} and {os.path.join(run_dir, 'samples')}. "
            "What to try: another --set seed=N; a higher self_reg_weight (changes kept smaller); "
            "fewer iterations; or, when the real images differ from the synthetic ones in what they "
            "show and not only in how they look, a simulator closer to them"
        )
    log.info(f"selected the refiner of step {choice['step']}: {choice['reason']}")
    if refiner.tone is not None:
        curves = ", ".join(f"{t[0]:.2f}..{t[-1]:.2f}" for t in refiner.tone.table.tolist())
        log.info(f"its tone curve, fitted to the real images, maps black..white to {curves}")
    middle = StrokeWidth.QUANTILES // 2
    if refiner.size is not None:
        log.info(f"its size curve, fitted to the real images, takes the median glyph size (root mean square "
                 f"distance of the ink from its centre) from {refiner.size.source[middle]:.2f} to "
                 f"{refiner.size.target[middle]:.2f} px")
    if refiner.stroke is not None:
        log.info(f"its stroke-width curve, fitted to the real images, takes the median stroke from "
                 f"{refiner.stroke.source[middle]:.2f} to {refiner.stroke.target[middle]:.2f} px")
    if refiner.blur is not None:
        sigma = ", ".join(f"{value:.2f}" for value in refiner.blur.sigma.tolist())
        log.info(f"its blur, fitted to the real images' edges, is a Gaussian of {sigma} px"
                 if refiner.blur.sigma.any() else "its blur is off: the real images' edges are as sharp as the synthetic")
    if refiner.shading is not None:
        fields = refiner.shading.fields
        spread = ", ".join(f"{value * 255:.1f}" for value in unevenness(fields, geometry.height, geometry.width).tolist())
        log.info(f"its shading, fitted to the real paper, lights each page as a real one is: the paper strays "
                 f"{spread} of 255 levels from its mean (median over the fields)"
                 if fields.any() else "its shading is off: the real paper is as evenly lit as the synthetic")
    if refiner.grain is not None:
        sigma = ", ".join(f"{value * 255:.1f}" for value in refiner.grain.sigma.tolist())
        log.info(f"its sensor grain, fitted to the real images, adds noise of standard deviation {sigma} of 255 levels"
                 if refiner.grain.sigma.any() else "its sensor grain is off: the real images are no noisier than the synthetic")
    return path


def train(
    synthetic_dir: str,
    real_dir: str,
    run_dir: str,
    preset: str = "digits",
    config_file: str | None = None,
    overrides: dict | None = None,
    workers: int = 1,
    address: str | None = None,
    local: bool = False,
    stop_after: int | None = None,
) -> str | None:
    """Train a refiner; returns the path of RUN_DIR/refiner.safetensors (None when
    `stop_after` ended the run before its last step).

    The exported refiner is the best scored candidate (pipeline.training.selection).
    When none passes and some failed the label check, the run is done again (config
    `label_loss_retry`): with the label-consistency loss in RUN_DIR/with-label-loss,
    then, refused for its labels there too, with the fitted tone, blur, shading and grain curves
    alone in RUN_DIR/fitted-curves-only (RETRIES; a retry that would change nothing is
    skipped). The refiner of the last run is copied to RUN_DIR; when none passes,
    RefinerRefused is raised after the export. `stop_after` applies to the first run.

    Runs as a Ray Train job (embedded local Ray unless `address` names a cluster), or
    with `local=True` as a plain loop in this process. Re-running with the same
    arguments resumes from the last checkpoint. `stop_after` ends the run after that
    many more steps (as if it were killed there).
    """
    config = make_config(preset, config_file, overrides)
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if local and (workers != 1 or address):
        raise UserError("--local trains in this process: it cannot be combined with --workers or --address")
    try:
        return _attempt(config, preset, synthetic_dir, real_dir, run_dir, workers, address, local, stop_after)
    except RefinerRefused as refused:
        refusal = refused
    # Refused: train again, differently, while the last run was refused for its labels.
    exported = os.path.join(run_dir, REFINER_FILE)
    tried, last = [os.path.join(run_dir, selection.CHOICE_FILE)], (config, run_dir)
    for folder, retry, what in planned_retries(config):
        if not _refused_for_labels(*last):
            break
        retry_dir = os.path.join(run_dir, folder)
        log.info(f"the run was refused and some candidates changed the labels: training again {what} in {retry_dir}")
        try:
            _attempt(retry, preset, synthetic_dir, real_dir, retry_dir, workers, address, local, None)
        except RefinerRefused as again:
            refusal, last = again, (retry, retry_dir)
            tried.append(os.path.join(retry_dir, selection.CHOICE_FILE))
            _copy(os.path.join(retry_dir, REFINER_FILE), exported)
            continue
        _copy(os.path.join(retry_dir, REFINER_FILE), exported)
        log.info(f"the refiner of the run {what} is copied to {exported}")
        return exported
    if len(tried) == 1:
        raise refusal
    earlier = "The first run was" if len(tried) == 2 else "The earlier runs were"
    raise RefinerRefused(f"{refusal} ({earlier} refused as well: {', '.join(tried[:-1])}.)") from None


def planned_retries(config: TrainConfig) -> list[tuple[str, TrainConfig, str]]:
    """(folder, config, what) of each run RETRIES makes in turn after a run with `config`
    refused for its labels; one that would change nothing is left out."""
    plan, previous = [], config
    if not config.label_loss_retry:
        return plan
    for folder, options, what in RETRIES:
        changes = options(config)
        if changes is None:
            continue
        retry = dataclasses.replace(config, **changes)
        if retry != previous:
            plan.append((folder, retry, what))
            previous = retry
    return plan


def _refused_for_labels(config: TrainConfig, run_dir: str) -> bool:
    """Did some candidate of this refused run fail the label check (of a label it has)?
    Then the label-consistency loss pulls the refiner back towards the labels where D
    pushed it away from them (on thin dark digits every candidate failed without it),
    and the fitted curves alone keep the glyphs' shape."""
    if not config.label:
        return False
    return any(selection.LABELS in record["failed_checks"] for record in selection.read_records(run_dir))


def _copy(source: str, target: str) -> None:
    with open(source, "rb") as handle:
        atomic_write(target, handle.read())


def _attempt(config, preset, synthetic_dir, real_dir, run_dir, workers, address, local, stop_after) -> str | None:
    """One training run in RUN_DIR and its export."""
    os.makedirs(run_dir, exist_ok=True)
    save_config(run_dir, config, preset)
    problems_file = os.path.join(run_dir, PROBLEMS_FILE)
    if os.path.exists(problems_file):
        os.remove(problems_file)  # rewritten from this run's reading of the data
    if local:
        synthetic = read_folder(synthetic_dir, "synthetic")
        real = read_folder(real_dir, "real")
        check_compatible(synthetic.geometry, real.geometry)
        record_problems(run_dir, "synthetic", synthetic.problems)
        record_problems(run_dir, "real", real.problems)
        labels = extract_labels(synthetic.labels, config.label, synthetic.names) if config.label else None
        run_local(
            config, preset, torch.from_numpy(synthetic.images), torch.from_numpy(real.images),
            run_dir, pick_device(), stop_after=stop_after, labels=labels,
        )
        geometry = synthetic.geometry
    else:
        from pipeline.training.ray_job import run_ray

        _, geometry = run_ray(config, preset, synthetic_dir, real_dir, run_dir, workers, address, stop_after)
    plot_loss_curves(run_dir)
    if stop_after is not None and not any(r["step"] == config.total_steps for r in selection.read_records(run_dir)):
        return None  # stopped early on purpose: nothing to export yet
    return export_refiner(run_dir, config, geometry)
