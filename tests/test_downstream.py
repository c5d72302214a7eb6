"""Downstream estimators: shapes, determinism, and that they really learn."""

import numpy as np
import pytest
import torch

from pipeline.data.output import write_labelled_shard
from pipeline.evaluation import downstream, images, metrics
from helpers.standins import write_digits, write_eyes

QUICK = downstream.TrainSettings(steps=60, batch_size=32, gaze_model="small")


def test_paper_gaze_network_has_the_papers_fc_9600():
    model = downstream.GazeCNN(downstream.GAZE_SPECS["paper"])
    assert model.fc.in_features == 9600
    out = model(torch.rand(4, 1, 35, 55))
    assert out.shape == (4, 3)
    np.testing.assert_allclose(out.norm(dim=1).detach().numpy(), 1.0, atol=1e-5)


def test_augment_keeps_shape_and_range_and_is_identity_when_off():
    batch = torch.rand(8, 1, 28, 28)
    same = downstream.augment(batch, torch.Generator().manual_seed(0), shift=0, jitter=0.0)
    assert torch.equal(same, batch)
    moved = downstream.augment(batch, torch.Generator().manual_seed(0), shift=2, jitter=0.2)
    assert moved.shape == batch.shape
    assert float(moved.min()) >= 0 and float(moved.max()) <= 1
    assert not torch.equal(moved, batch)


def test_same_seed_gives_identical_estimators_other_seed_does_not(tmp_path):
    data = images.load_folder(write_digits(tmp_path / "d", 64, seed=1))
    targets = images.class_labels(data)
    settings = downstream.TrainSettings(steps=5, batch_size=16)
    a = downstream.train_estimator("digits", data.images, targets, 3, settings)
    b = downstream.train_estimator("digits", data.images, targets, 3, settings)
    c = downstream.train_estimator("digits", data.images, targets, 4, settings)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))


def test_digits_classifier_learns_and_generalises(tmp_path):
    train = images.load_folder(write_digits(tmp_path / "train", 300, seed=1))
    test = images.load_folder(write_digits(tmp_path / "test", 200, seed=2))
    model = downstream.train_estimator("digits", train.images, images.class_labels(train), 0, QUICK)
    acc = metrics.accuracy(downstream.predict(model, test.images), images.class_labels(test))
    assert acc > 0.9


def test_gaze_estimator_beats_predicting_the_mean(tmp_path):
    train = images.load_folder(write_eyes(tmp_path / "train", 300, seed=1))
    test = images.load_folder(write_eyes(tmp_path / "test", 150, seed=2))
    settings = downstream.TrainSettings(steps=150, batch_size=32, shift=0, gaze_model="small")
    model = downstream.train_estimator("gaze", train.images, images.gaze_labels(train), 0, settings)
    truth = images.gaze_labels(test)
    errors = metrics.angle_errors(downstream.predict(model, test.images), truth)
    mean_vector = np.repeat(images.gaze_labels(train).mean(axis=0, keepdims=True), len(truth), axis=0)
    baseline = metrics.angle_errors(mean_vector, truth)
    assert errors.mean() < 0.6 * baseline.mean()


def test_load_folder_records_unusable_samples_with_shard_and_key(tmp_path):
    folder = write_digits(tmp_path / "d", 6, seed=0)
    write_labelled_shard(
        folder,
        "d-000001.tar",
        [
            ("big", np.zeros((30, 30), np.uint8), {"class": 1}),
            ("nolabel", np.zeros((28, 28), np.uint8), {"other": 1}),
        ],
    )
    data = images.load_folder(folder, require="class")
    assert len(data) == 6
    found = {(p.shard, p.key, p.kind) for p in data.problems}
    assert ("d-000001.tar", "big", "wrong_shape") in found
    assert ("d-000001.tar", "nolabel", "invalid_labels") in found


def test_load_folder_refuses_an_empty_or_missing_folder(tmp_path):
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="folder not found"):
        images.load_folder(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .tar shards"):
        images.load_folder(str(tmp_path / "empty"))
