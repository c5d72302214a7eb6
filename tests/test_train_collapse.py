"""The collapse check on the exported refiner: working refiners pass, flat or constant ones are caught."""

import json
import os

import numpy as np
import torch
from torch import nn

from pipeline.models import Refiner, refiner_preset
from pipeline.training.collapse import CHECK_FILE, refiner_check, write_check


def digits_like(n=64, seed=0):
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 1, 12, 12), np.float32)
    for image in images:
        top, left = rng.integers(1, 5, size=2)
        image[0, top : top + 6, left : left + 2] = 1.0  # a stroke somewhere
    return images


class SameImage(nn.Module):
    """Mode collapse: one non-flat picture whatever the input."""

    def forward(self, x):
        pattern = torch.zeros(x.shape[1:])
        pattern[..., 3:9, 5:7] = 1.0
        return pattern.expand_as(x).clone()


def test_a_near_identity_refiner_passes_and_the_file_is_written(tmp_path):
    torch.manual_seed(0)
    figures = refiner_check(Refiner(refiner_preset("digits")), digits_like())
    assert not figures["collapsed"]
    assert abs(figures["refined_contrast"] - figures["synthetic_contrast"]) < 0.05
    assert write_check(str(tmp_path), figures) is None
    assert json.load(open(os.path.join(tmp_path, CHECK_FILE)))["collapsed"] is False


def test_a_refiner_that_blacks_out_every_image_is_caught(tmp_path):
    refiner = Refiner(refiner_preset("digits"))
    with torch.no_grad():
        refiner.conv_out.bias.fill_(-30.0)
    figures = refiner_check(refiner, digits_like())
    assert figures["collapsed"] and figures["refined_contrast"] < 1e-3
    warning = write_check(str(tmp_path), figures)
    assert warning.startswith("WARNING: the refiner collapsed") and str(tmp_path) in warning
    assert json.load(open(os.path.join(tmp_path, CHECK_FILE)))["collapsed"] is True


def test_a_refiner_that_draws_one_picture_for_every_input_is_caught():
    figures = refiner_check(SameImage(), digits_like())
    assert figures["refined_contrast"] > 0.5 * figures["synthetic_contrast"]  # not flat...
    assert figures["refined_diversity"] < 1e-6 and figures["collapsed"]  # ...but all the same
