"""Checkpoint selection without real labels: the split, the scores, the rule, and the
refusal of a run whose every candidate would harm the data."""

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn import functional as F

from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.refine import refine_dataset
from pipeline.refiner_file import load_refiner, read_refiner_info
from pipeline.training import selection
from pipeline.training.job import (
    CURVES_DIR, LABEL_LOSS_DIR, RefinerRefused, _refused_for_labels, planned_retries, train,
)
from pipeline.training.task import extract_labels
from helpers.train import TINY, tiny_config, write_folders

SIZE = 12


def bars(n, seed):
    """Horizontal bars; the class is the bar's row band (what a refiner must not move)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 1, SIZE, SIZE), np.float32)
    rows = rng.integers(1, SIZE - 3, size=n)
    for image, row in zip(images, rows):
        image[0, row : row + 2, 2:-2] = 1.0
    return torch.from_numpy(images), [{"class": int(row) // 3} for row in rows]


def look_real(x):
    """How the 'real' domain draws the same bars: dimmer and blurred."""
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]).view(1, 1, 3, 3) / 16
    return F.conv2d(F.pad(0.6 * x, (1, 1, 1, 1), mode="replicate"), kernel)


class Function(nn.Module):
    """A stand-in refiner: any image-to-image function."""

    def __init__(self, function):
        super().__init__()
        self.function = function
        self.weight = nn.Parameter(torch.zeros(1))  # so it has a state dict to save

    def forward(self, x):
        return self.function(x)


@pytest.fixture(scope="module")
def held_out():
    synthetic, labels = bars(400, seed=0)
    real = look_real(bars(400, seed=1)[0])
    config = tiny_config(realism_margin=0.02)
    prepared = selection.prepare(config, synthetic, real, extract_labels(labels, "class", [str(i) for i in range(400)]))
    return config, prepared


def test_the_held_out_split_is_fixed_by_the_seed_disjoint_and_bounded():
    train_a, held_a = selection.split_index(5000, 0.1, 0, "real")
    train_b, held_b = selection.split_index(5000, 0.1, 0, "real")
    assert np.array_equal(held_a, held_b) and len(held_a) == 500
    assert not set(train_a) & set(held_a) and len(train_a) + len(held_a) == 5000
    assert not np.array_equal(held_a, selection.split_index(5000, 0.1, 1, "real")[1])
    assert len(selection.split_index(50000, 0.1, 0, "real")[1]) == selection.MAX_HELD_OUT
    assert len(selection.split_index(24, 0.1, 0, "real")[1]) == selection.MIN_HELD_OUT


def test_prepare_holds_images_out_of_training(held_out):
    config, prepared = held_out
    assert len(prepared.synthetic) + len(prepared.held_out.synthetic) == 400
    assert len(prepared.labels) == len(prepared.synthetic)
    assert prepared.held_out.raw_two_sample > 0.9  # raw bars are easy to tell from real ones


def test_each_check_fails_the_refiner_it_is_for(held_out):
    config, prepared = held_out
    good = selection.score(Function(look_real), prepared.held_out, config)
    assert good["passed"], good["failed"]
    assert good["two_sample"] < prepared.held_out.raw_two_sample - 0.2
    assert good["confidence"] < prepared.held_out.raw_confidence - 0.2
    assert good["label_consistency"] > 0.9

    black = selection.score(Function(lambda x: 0.01 * x), prepared.held_out, config)
    assert not black["passed"] and any(reason.startswith("collapsed") for reason in black["failed"])

    # Looks real, but every bar moved by 4 rows: the label is gone.
    moved = selection.score(Function(lambda x: look_real(torch.roll(x, 4, dims=2))), prepared.held_out, config)
    assert not moved["passed"] and any(reason.startswith("label consistency") for reason in moved["failed"])

    identity = selection.score(Function(lambda x: x), prepared.held_out, config)
    assert not identity["passed"] and any("not more realistic" in reason for reason in identity["failed"])


def test_selection_exports_a_better_candidate_than_the_last(held_out, tmp_path):
    config, prepared = held_out
    selector = selection.Selector(str(tmp_path), config, prepared.held_out, start_step=0, echo=False)
    selector.score(Function(lambda x: 0.5 * x + 0.5 * look_real(x)), 10)  # halfway
    selector.score(Function(look_real), 20)  # the best
    selector.score(Function(lambda x: 0.01 * x), 30)  # the last: collapsed
    choice = selection.choose(selection.read_records(str(tmp_path)))
    assert choice["status"] == "passed" and choice["step"] == 20
    assert [os.path.basename(selection.candidate_path(str(tmp_path), s)) for s in (10, 20, 30)] == sorted(
        os.listdir(tmp_path / selection.CANDIDATES_DIR))
    # A resumed run drops the records of the steps it redoes.
    selection.Selector(str(tmp_path), config, prepared.held_out, start_step=20, echo=False)
    assert [r["step"] for r in selection.read_records(str(tmp_path))] == [10, 20]


def test_no_passing_candidate_is_a_refusal_naming_why():
    records = [{"step": 5, "passed": False, "two_sample": 0.99, "raw_two_sample": 0.95, "confidence": 0.97,
                "failed": ["collapsed: its images keep contrast 0.01"], "failed_checks": ["collapse"]},
               {"step": 10, "passed": False, "two_sample": 0.97, "raw_two_sample": 0.95, "confidence": 0.96,
                "failed": ["label consistency 0.5 is below min_label_consistency 0.9", "collapsed: x"],
                "failed_checks": ["collapse", "labels"]}]
    choice = selection.choose(records)
    assert choice["status"] == "refused" and choice["step"] == 5
    assert "collapsed in 2, labels not kept in 1" in choice["reason"]
    assert "the least bad, step 5: collapsed: its images keep contrast 0.01" in choice["reason"]


# A refiner that may change images freely (almost no self-regularisation) and learns 500x
# faster than the demo's: D's gradients drive it off the data within a few steps.
RUNAWAY = {**{k: v for k, v in TINY.items() if k != "model"}, "realism_margin": 0.02, "self_reg_weight": 0.001,
           "lr_refiner": 0.05, "iterations": 12, "select_every": 4}


@pytest.mark.slow
def test_a_run_with_no_safe_refiner_exits_non_zero_and_refine_dataset_refuses_its_file(tmp_path):
    syn, real = write_folders(tmp_path, n=40)
    run_dir = str(tmp_path / "run")
    result = CliRunner().invoke(main, ["train", "--synthetic", syn, "--real", real, "--out", run_dir, "--local"]
                                + [arg for k, v in RUNAWAY.items() for arg in ("--set", f"{k}={v}")])
    assert result.exit_code != 0
    assert "no refiner of this run is safe to use" in result.output and "What to try" in result.output
    assert "Traceback" not in result.output
    # Its candidates changed the labels, so it trained once more with the label-consistency
    # loss, in a run folder of its own, and that run was refused too.
    assert "training again with the label-consistency loss" in result.output
    assert "The first run was refused as well" in result.output
    retried = os.path.join(run_dir, LABEL_LOSS_DIR)
    assert json.load(open(os.path.join(retried, "config.json")))["label_consistency_weight"] == 1.0
    assert json.load(open(os.path.join(retried, selection.CHOICE_FILE)))["status"] == "refused"
    # The loss kept the labels there (its candidates were refused as not more realistic),
    # so no third run with the fitted curves alone was made.
    assert not any(selection.LABELS in r["failed_checks"] for r in selection.read_records(retried))
    assert not os.path.exists(os.path.join(run_dir, CURVES_DIR))
    assert read_refiner_info(os.path.join(run_dir, "refiner.safetensors")).content_hash == read_refiner_info(
        os.path.join(retried, "refiner.safetensors")).content_hash  # the last run's, marked failed
    choice = json.load(open(os.path.join(run_dir, selection.CHOICE_FILE)))
    assert choice["status"] == "refused" and [c["step"] for c in choice["candidates"]] == [8, 12, 16]
    assert all(not c["passed"] and c["failed"] for c in choice["candidates"])
    path = os.path.join(run_dir, "refiner.safetensors")
    info = read_refiner_info(path)
    assert info.failed and info.quality["status"] == "refused"
    with pytest.raises(UserError, match="failed its training run's checks"):
        refine_dataset(syn, str(tmp_path / "refined"), path)
    assert not os.path.exists(tmp_path / "refined")  # refused before any work
    result = CliRunner().invoke(main, ["refine", "--in", syn, "--out", str(tmp_path / "refined"), "--refiner", path])
    assert result.exit_code != 0 and "--force" in result.output
    summary = refine_dataset(syn, str(tmp_path / "forced"), path, force=True)
    assert summary["samples"] == 40
    with pytest.raises(RefinerRefused):  # re-running the finished run gives the same verdict
        train(syn, real, run_dir, overrides=RUNAWAY, local=True)


def test_the_label_consistency_loss_trains_against_another_network_than_the_check():
    synthetic, labels = bars(200, seed=0)
    real = look_real(bars(200, seed=1)[0])
    found = extract_labels(labels, "class", [str(i) for i in range(200)])
    assert selection.prepare(tiny_config(), synthetic, real, found).loss_network is None
    prepared = selection.prepare(tiny_config(label_consistency_weight=1.0), synthetic, real, found)
    check, loss = prepared.held_out.network, prepared.loss_network
    assert loss is not None and loss is not check
    assert not torch.equal(check.head.weight, loss.head.weight)


def test_only_a_run_refused_for_its_labels_trains_again(tmp_path):
    def run_with(*checks):
        run_dir = tmp_path / str(len(list(tmp_path.iterdir())))
        run_dir.mkdir()
        (run_dir / selection.SELECTION_FILE).write_text("".join(
            json.dumps({"step": step, "failed_checks": list(checks)}) + "\n" for step in (4, 8)))
        return str(run_dir)

    assert _refused_for_labels(tiny_config(), run_with("labels"))
    assert _refused_for_labels(tiny_config(), run_with("collapse", "labels"))
    assert not _refused_for_labels(tiny_config(), run_with("realism"))  # the loss does not make images real
    assert not _refused_for_labels(tiny_config(label=""), run_with("labels"))  # no label to keep


FIELDS = ("label_consistency_weight", "stroke_width", "k_g", "iterations", "pretrain_discriminator_steps")


def _retries(**options):
    return [(folder, {k: getattr(config, k) for k in FIELDS}) for folder, config, _ in planned_retries(tiny_config(**options))]


def test_the_retries_add_the_label_loss_then_keep_the_fitted_curves_alone_and_skip_what_changes_nothing():
    curves_only = (CURVES_DIR, {"label_consistency_weight": 0.0, "stroke_width": False, "k_g": 0, "iterations": 50,
                                "pretrain_discriminator_steps": 0})
    loss = (LABEL_LOSS_DIR, {"label_consistency_weight": 1.0, "stroke_width": True, "k_g": 2, "iterations": 4,
                             "pretrain_discriminator_steps": 2})
    assert _retries(stroke_width=True, tone_map=True) == [loss, curves_only]
    assert _retries(stroke_width=True, tone_map=False, blur=True) == [loss, curves_only]
    assert _retries(stroke_width=True) == [loss]  # no tone, blur or grain curve: it would be the identity
    assert _retries(stroke_width=True, tone_map=True, label_consistency_weight=1.0) == [curves_only]
    assert _retries(stroke_width=True, tone_map=True, label_loss_retry=False) == []


def test_a_run_of_the_fitted_curves_alone_changes_images_by_them_only(tmp_path):
    # The last retry's configuration, trained for real: the refiner never gets an
    # adversarial update, so what it does to an image is the fitted curves' change.
    syn, real = write_folders(tmp_path, n=24)
    config = planned_retries(tiny_config(tone_map=True, stroke_width=True, select_every=4))[-1][1]
    path = train(syn, real, str(tmp_path / "run"), overrides=config.to_dict(), local=True)
    refiner, _ = load_refiner(path)
    assert refiner.stroke is None and refiner.tone is not None
    x = torch.rand(4, 1, 12, 12)
    with torch.no_grad():
        refined, through_curves, _ = refiner.parts(x)
    assert not torch.equal(through_curves, x)  # the tone curve fitted to the dimmer real bars
    assert (refined - through_curves).abs().max() < 0.01  # the appearance refiner stayed the identity
    records = selection.read_records(str(tmp_path / "run"))
    assert [r["step"] for r in records] == [config.total_steps]  # one candidate: every step's refiner is the same
