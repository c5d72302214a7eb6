"""Metrics: known values, and realism metrics that separate what differs."""

import numpy as np
import pytest

from pipeline.evaluation import downstream, images, metrics, realism
from helpers.standins import gaze_vector, write_digits


def test_binomial_p_value_reproduces_the_papers_turing_test():
    # Shrivastava et al.: 517 of 1,000 answers correct, p = 0.148.
    assert metrics.binomial_p_value(517, 1000) == pytest.approx(0.148, abs=0.0005)
    # Raw synthetic images: 162 of 200 correct, far beyond chance.
    assert metrics.binomial_p_value(162, 200) < 1e-15
    assert metrics.binomial_p_value(0, 0) == 1.0


def test_angle_errors_and_share_within():
    truth = np.array([gaze_vector(0, 0)] * 3)
    predicted = np.array([gaze_vector(0, 0), gaze_vector(10, 0), gaze_vector(0, -30)])
    errors = metrics.angle_errors(predicted, truth)
    np.testing.assert_allclose(errors, [0, 10, 30], atol=1e-4)
    within = metrics.share_within(errors)
    assert list(within) == [str(d) for d in range(5, 26)]
    assert within["5"] == pytest.approx(1 / 3)
    assert within["10"] == pytest.approx(2 / 3)
    assert within["25"] == pytest.approx(2 / 3)


def test_accuracy_and_summary():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [1.0, 0.0]])
    assert metrics.accuracy(logits, np.array([0, 1, 1, 0])) == 0.75
    summary = metrics.summarise([0.5, 0.7, 0.9])
    assert summary["mean"] == pytest.approx(0.7)
    assert summary["std"] == pytest.approx(0.2)
    assert metrics.summarise([0.4])["std"] == 0.0


def test_inception_score_bounds():
    confident_diverse = np.eye(10)
    assert metrics.inception_score(confident_diverse) == pytest.approx(10.0, rel=1e-6)
    confident_one_class = np.tile(np.eye(10)[:1], (10, 1))
    assert metrics.inception_score(confident_one_class) == pytest.approx(1.0, rel=1e-6)
    uniform = np.full((10, 10), 0.1)
    assert metrics.inception_score(uniform) == pytest.approx(1.0, rel=1e-6)


def test_frechet_distance_zero_for_same_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    b = rng.normal(size=(500, 4))
    same = metrics.frechet_distance(a, a)
    assert abs(same) < 1e-6
    near = metrics.frechet_distance(a, b)
    far = metrics.frechet_distance(a, b + 3.0)
    assert near < 0.2
    # A mean shift of 3 in 4 dimensions adds 4 * 9 = 36.
    assert far == pytest.approx(near + 36, abs=1.0)


def test_label_agreement_and_feature_metrics(tmp_path):
    real = images.load_folder(write_digits(tmp_path / "real", 300, seed=1, style="soft"))
    synthetic = images.load_folder(write_digits(tmp_path / "syn", 200, seed=2, style="sharp"))
    settings = downstream.TrainSettings(steps=80, batch_size=32)
    model = downstream.train_estimator("digits", real.images, images.class_labels(real), 0, settings)
    targets = images.class_labels(synthetic)
    agreement = realism.label_agreement("digits", model, synthetic.images, targets)
    assert agreement > 0.8
    shuffled = realism.label_agreement("digits", model, synthetic.images, np.roll(targets, 1))
    assert shuffled < agreement - 0.5
    fm_self = realism.feature_metrics("digits", model, real.images[:150], real.images[150:])
    fm_syn = realism.feature_metrics("digits", model, real.images, synthetic.images)
    assert fm_syn["frechet_distance"] > fm_self["frechet_distance"]
    assert 1.0 <= fm_syn["inception_score"] <= 10.0
